"""The pure half of ``agentstream rejoin``: times, strategies, re-derived triplets and their versions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentstream.schemas import AvroSerializer, RolloutState, genai, load_schema
from agentstream.schemas.rollout_event import RolloutConfig
from agentstream.settings import StreamSettings
from agentstream.streams.rejoin_plan import (
    ExistingTriplet,
    RolloutLog,
    content_fingerprint,
    derive_triplets,
    parse_when,
    plan_versions,
    strategy_for,
)

NOW = 1_800_000_000_000_000
HOUR = 3_600_000_000
FINGERPRINT = content_fingerprint(AvroSerializer(load_schema("triplet")))


def span(
    span_id: str, end: int, kind: str = "llm", rollout_id: str = "r1", parent: str | None = None
) -> dict[str, Any]:
    return {
        "rollout_id": rollout_id,
        "attempt_id": f"{rollout_id}#1",
        "span_id": span_id,
        "parent_span_id": parent,
        "sequence_id": 0,
        "kind": kind,
        "start_time": end - 1000,
        "end_time": end,
        "attributes": {
            genai.INPUT_MESSAGES: json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": span_id}]}]
            ),
            genai.OUTPUT_MESSAGES: "[]",
            genai.REQUEST_MODEL: "m",
        },
        "prompt_token_ids": [1, 2],
        "response_token_ids": [3],
        "response_logprobs": [-0.25],
        "resource_name": "prompt",
        "resource_version": "v1",
    }


def reward(reward_id: str, at: int, value: float = 1.0, rollout_id: str = "r1") -> dict[str, Any]:
    return {
        "reward_id": reward_id,
        "rollout_id": rollout_id,
        "attempt_id": f"{rollout_id}#1",
        "value": value,
        "timestamp": at,
        "sequence_id": 0,
        "span_id": None,
        "response_id": None,
        "feedback": None,
        "name": "reward",
    }


def two_calls_and_a_reward(*extra: tuple[str, dict[str, Any]]) -> RolloutLog:
    log = RolloutLog("r1", NOW // 1000)
    records = [
        ("span", span("s1", NOW + 10)),
        ("span", span("s2", NOW + 20)),
        ("reward", reward("w", NOW + 30)),
    ]
    for offset, (kind, datum) in enumerate([*records, *extra]):
        time_us = datum.get("end_time", datum.get("timestamp"))
        log.add(time_us // 1000, 0 if kind == "span" else 1, 0, offset, kind, datum)
    return log


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW - 2 * HOUR),
        ("90m", NOW - 90 * 60_000_000),
        ("7d", NOW - 7 * 24 * HOUR),
        ("1w", NOW - 7 * 24 * HOUR),
        ("1.5h", NOW - 3 * HOUR // 2),
        ("2027-01-15T12:00:00Z", 1_800_014_400_000_000),
        ("2027-01-15T12:00:00", 1_800_014_400_000_000),  # naive: UTC
        ("2027-01-15T13:00:00+01:00", 1_800_014_400_000_000),
    ],
)
def test_since_is_an_iso_time_or_a_duration_before_now(text: str, expected: int) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2x", "-2h", ""])
def test_a_bad_time_names_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="ISO time .* duration"):
        parse_when(text, NOW)


def test_strategy_is_the_rollouts_own_else_its_task_types_else_the_default() -> None:
    streams = StreamSettings(credit_assignment={"support": "discounted"}, discount=0.8)

    def state(**kwargs: Any) -> RolloutState:
        return RolloutState(rollout_id="r1", status="running", created_at=NOW, updated_at=NOW, **kwargs)

    assert strategy_for(None, streams) == ("first_occurrence", 0.8)
    assert strategy_for(state(task_type="support"), streams) == ("discounted", 0.8)
    own = RolloutConfig(credit_assignment="final_broadcast", discount=0.5)
    assert strategy_for(state(task_type="support", config=own), streams) == ("final_broadcast", 0.5)


def test_derived_triplets_follow_the_strategy() -> None:
    log = two_calls_and_a_reward()
    first = derive_triplets(log, "first_occurrence", 0.9, horizon_us=HOUR)
    assert [(t.span_id, t.reward, t.step) for t in first] == [("s1", None, 0), ("s2", 1.0, 1)]
    assert [t.reward_dimensions for t in first] == [{}, {"reward": 1.0}]
    broadcast = derive_triplets(log, "final_broadcast", 0.9, horizon_us=HOUR, task_type="t", mode="val")
    assert [(t.span_id, t.reward) for t in broadcast] == [("s1", 1.0), ("s2", 1.0)]
    triplet = broadcast[0]
    assert (triplet.credit_assignment, triplet.task_type, triplet.mode) == ("final_broadcast", "t", "val")
    assert '"s1"' in triplet.prompt_messages and triplet.prompt_token_ids == [1, 2]
    assert (triplet.resource_version, triplet.model, triplet.created_at) == ("v1", "m", NOW + 10 - 1000)


def test_a_reward_past_the_horizon_is_dropped_and_tool_spans_give_no_triplet() -> None:
    late = reward("late", NOW + 20 + HOUR + 1, value=5.0)
    log = two_calls_and_a_reward(("reward", late), ("span", span("t1", NOW + 40, kind="tool")))
    triplets = derive_triplets(log, "final_broadcast", 0.9, horizon_us=HOUR)
    assert {t.span_id for t in triplets} <= {"s1", "s2"}
    assert [t.reward for t in triplets if t.reward is not None] == [1.0, 1.0]


def existing_from(emitted: list[dict[str, Any]]) -> dict[str, ExistingTriplet]:
    return {d["triplet_id"]: ExistingTriplet(d["version"], FINGERPRINT(d), d) for d in emitted}


def test_versions_new_changed_unchanged_and_retracted() -> None:
    log = two_calls_and_a_reward()
    before = derive_triplets(log, "final_broadcast", 0.9, horizon_us=HOUR)
    out, retracted, unchanged = plan_versions(before, {}, FINGERPRINT, emitted_at=NOW)
    assert [(d["span_id"], d["version"], d["emitted_at"]) for d in out] == [("s1", 1, NOW), ("s2", 1, NOW)]
    assert (retracted, unchanged) == (0, 0)
    existing = existing_from(out)

    # the same derivation again: nothing to emit
    again = derive_triplets(log, "final_broadcast", 0.9, horizon_us=HOUR)
    assert plan_versions(again, existing, FINGERPRINT, emitted_at=NOW + 1) == ([], 0, 2)

    # a new strategy: s2 keeps its reward but names another strategy (new version); s1 loses its
    # credit and, as uncredited calls give no triplet here, is retracted
    after = derive_triplets(log, "first_occurrence", 0.9, horizon_us=HOUR, emit_uncredited=False)
    credited = [t for t in after if t.reward is not None]
    assert credited == after
    out, retracted, _ = plan_versions(credited, existing, FINGERPRINT, emitted_at=NOW + 2)
    by_span = {d["span_id"]: d for d in out}
    assert by_span["s2"]["version"] == 2 and by_span["s2"]["credit_assignment"] == "first_occurrence"
    s1 = by_span["s1"]
    assert (s1["version"], s1["reward"], s1["reward_dimensions"], s1["retracted"]) == (2, None, {}, True)
    assert retracted == 1
    assert s1["prompt_messages"] == existing[s1["triplet_id"]].datum["prompt_messages"]

    # once emitted, a rerun emits nothing: the retraction is not repeated
    latest = {**existing, **existing_from(out)}
    assert plan_versions(credited, latest, FINGERPRINT, emitted_at=NOW + 3) == ([], 0, 2)


def test_the_fingerprint_ignores_version_and_emission_time_only() -> None:
    [triplet, *_] = derive_triplets(two_calls_and_a_reward(), "final_broadcast", 0.9, horizon_us=HOUR)
    datum = triplet.to_avro()
    assert FINGERPRINT(datum) == FINGERPRINT({**datum, "version": 7, "emitted_at": NOW})
    assert FINGERPRINT(datum) != FINGERPRINT({**datum, "reward": 0.5})
    assert FINGERPRINT(datum) != FINGERPRINT({**datum, "response_logprobs": [-0.5]})


def test_a_judge_call_below_a_reward_span_gives_no_triplet_and_its_old_one_is_retracted() -> None:
    # the judge's LLM call ends before the policy's last call and the reward: before the fix it was
    # a policy call; now its evaluation span (arriving after it) makes it a judge call
    judge = span("j1", NOW + 15, parent="ev")
    log = two_calls_and_a_reward(("span", judge), ("span", span("ev", NOW + 16, kind="reward")))
    triplets = derive_triplets(log, "final_broadcast", 0.9, horizon_us=HOUR)
    assert [(t.span_id, t.reward) for t in triplets] == [("s1", 1.0), ("s2", 1.0)]

    without_link = RolloutLog("r1", NOW // 1000)
    for offset, (_, _, _, _, kind, datum) in enumerate(log.records):
        if datum["span_id"] != "ev" or kind != "span":
            without_link.add(NOW // 1000, 0 if kind == "span" else 1, 0, offset, kind, datum)
    old = derive_triplets(without_link, "final_broadcast", 0.9, horizon_us=HOUR)
    assert sorted(t.span_id for t in old) == ["j1", "s1", "s2"]
    out, retracted, _ = plan_versions(
        triplets, existing_from([{**t.to_avro(), "version": 1} for t in old]), FINGERPRINT, emitted_at=NOW
    )
    assert retracted == 1 and [(d["span_id"], d["retracted"]) for d in out if d["retracted"]] == [
        ("j1", True)
    ]
