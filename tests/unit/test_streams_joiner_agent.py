"""The triplet joiner hop driven through Faust's ``test_context()``: LLM-call spans + rewards -> the
joins table -> triplets, with rewards also counted on the rollout's state."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from agentstream.schemas import Reward, Span, genai
from agentstream.topics.catalogue import HEADER_DLQ_SOURCE, HEADER_EVENT_ID
from tests.unit.test_streams_worker import (
    PARTITION,
    SECOND_US,
    Harness,
    enqueued,
    llm_span,
    reward,
    rollout_event,
    run_worker,
)

T0 = 1_700_000_000 * SECOND_US


def test_an_llm_call_and_its_reward_make_a_triplet(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("rollout-events", enqueued("r1", credit_assignment="final_broadcast"), key="r1")
        await h.send("spans", llm_span("r1", "s1", T0), key="r1")
        assert h.outputs.to("t.triplets") == []  # no reward yet
        await h.send("rewards", reward("r1", "w1", 0.75, T0 + SECOND_US), key="r1")

    h = run_worker(tmp_path, scenario, emit_uncredited_calls=False)
    [sent] = h.outputs.to("t.triplets")
    [triplet] = h.outputs.decoded("t.triplets", "triplet")
    assert sent.key == b"r1"
    assert sent.headers == [(HEADER_EVENT_ID, f"{triplet['triplet_id']}@{triplet['version']}".encode())]
    assert triplet["rollout_id"] == "r1" and triplet["span_id"] == "s1" and triplet["attempt_id"] == "r1#1"
    assert triplet["reward"] == 0.75 and triplet["credit_assignment"] == "final_broadcast"
    assert triplet["prompt_token_ids"] == [1, 2, 3] and triplet["response_token_ids"] == [4, 5]
    assert triplet["resource_name"] == "prompt" and triplet["resource_version"] == "v1"
    assert triplet["model"] == "m" and triplet["mode"] == "train"
    # the join and the span's location are in the joins table; its changelog went out too
    record = h.worker.joiner.joins["r1"]
    assert record.locations == {"s1": [PARTITION, 0]}
    assert [c.partition for c in h.outputs.to("t.streams-joins-changelog")] == [PARTITION] * 2
    # the reward was also counted on the rollout's state
    state = h.worker.lifecycle.rollouts["r1"]
    assert state.reward_count == 1 and state.reward_sum == 0.75
    assert h.worker.stats.triplets == 1


def test_a_redelivered_reward_resends_the_triplets(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("spans", llm_span("r1", "s1", T0), key="r1")
        await h.send("rewards", reward("r1", "w1", 1.0, T0 + SECOND_US), key="r1")
        await h.send("rewards", reward("r1", "w1", 1.0, T0 + SECOND_US), key="r1")

    h = run_worker(tmp_path, scenario, emit_uncredited_calls=False)
    first, again = h.outputs.to("t.triplets")
    assert first.headers == again.headers  # the same triplet id and version
    emitted, resent = h.outputs.decoded("t.triplets", "triplet")
    assert emitted.pop("emitted_at") <= resent.pop("emitted_at") and emitted == resent
    assert h.worker.stats.resent == 1


def test_spans_of_other_kinds_make_no_triplet_but_count_as_activity(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("rollout-events", enqueued("r1", unresponsive_seconds=10.0), key="r1")
        await h.send("rollout-events", rollout_event("r1", "attempt_started", 1, timestamp=T0), key="r1")
        await h.send("spans", llm_span("r1", "s1", T0 + 8 * SECOND_US, kind="tool"), key="r1")
        await h.send("rewards", reward("r1", "w1", 1.0, T0 + 9 * SECOND_US), key="r1")

    h = run_worker(tmp_path, scenario)
    assert h.outputs.to("t.triplets") == []
    assert h.worker.joiner.joins["r1"].locations == {}
    h.worker.lifecycle.fire_overdue({PARTITION}, T0 + 15 * SECOND_US)  # the tool span kept it alive
    assert h.outputs.to("t.rollout-events") == []


def test_a_reward_past_the_late_reward_horizon_is_dropped(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("spans", llm_span("r1", "s1", T0), key="r1")
        await h.send("rewards", reward("r1", "w1", 1.0, T0 + 11 * SECOND_US), key="r1")

    h = run_worker(tmp_path, scenario, late_reward_horizon_seconds=10.0, emit_uncredited_calls=False)
    assert h.outputs.to("t.triplets") == []
    assert h.worker.stats.late_rewards_dropped == 1


def test_an_undecodable_reward_goes_to_the_dead_letter_topic(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("rewards", b"\x00garbage", key="r1")
        await h.send("spans", llm_span("r1", "s1", T0), key="r1")

    h = run_worker(tmp_path, scenario)
    [dead] = h.outputs.to("t.dead-letter")
    assert dict(dead.headers or [])[HEADER_DLQ_SOURCE] == f"t.rewards/{PARTITION}/0".encode()
    assert h.worker.joiner.joins["r1"].locations == {"s1": [PARTITION, 0]}


# ---- triplet fidelity (issue 14) ------------------------------------------------------------------
def newest(h: Harness) -> dict[str, dict[str, Any]]:
    """The newest version of each triplet sent, by (rollout id, span id)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for triplet in h.outputs.decoded("t.triplets", "triplet"):
        key = (triplet["rollout_id"], triplet["span_id"])
        if key not in out or triplet["version"] > out[key]["version"]:
            out[key] = triplet
    return {f"{r}/{s}": t for (r, s), t in sorted(out.items())}


def with_attributes(span: Span, **attributes: Any) -> Span:
    return span.model_copy(update={"attributes": {**span.attributes, **attributes}})


def named_reward(rollout_id: str, reward_id: str, name: str, value: float, at_us: int) -> Reward:
    return reward(rollout_id, reward_id, value, at_us).model_copy(update={"name": name})


def test_rollouts_sharing_span_ids_keep_their_own_calls(tmp_path: Path) -> None:
    """Span ids are unique per trace only: the call-content cache is keyed by rollout and span."""

    async def scenario(h: Harness) -> None:
        for rollout_id in ("r1", "r2"):
            prompt = f'[{{"role": "user", "parts": [{{"type": "text", "content": "{rollout_id}"}}]}}]'
            span = with_attributes(llm_span(rollout_id, "s1", T0), **{genai.INPUT_MESSAGES: prompt})
            await h.send("spans", span, key=rollout_id)
        for rollout_id in ("r2", "r1"):
            await h.send(
                "rewards", reward(rollout_id, f"w-{rollout_id}", 1.0, T0 + SECOND_US), key=rollout_id
            )

    h = run_worker(tmp_path, scenario)
    triplets = h.outputs.decoded("t.triplets", "triplet")
    assert len(triplets) == 4  # each call uncredited, then credited
    for triplet in triplets:
        assert f'"content": "{triplet["rollout_id"]}"' in triplet["prompt_messages"]


def test_every_call_gives_a_triplet_with_a_null_reward_until_credited(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("rollout-events", enqueued("r1", credit_assignment="first_occurrence"), key="r1")
        await h.send("spans", llm_span("r1", "s1", T0), key="r1")
        await h.send("spans", llm_span("r1", "s2", T0 + SECOND_US), key="r1")
        await h.send("rewards", reward("r1", "w1", 1.0, T0 + 2 * SECOND_US), key="r1")

    h = run_worker(tmp_path, scenario)
    sent = [
        (t["span_id"], t["version"], t["reward"], t["retracted"])
        for t in h.outputs.decoded("t.triplets", "triplet")
    ]
    assert sent == [("s1", 1, None, False), ("s2", 1, None, False), ("s2", 2, 1.0, False)]
    assert newest(h)["r1/s2"]["reward_dimensions"] == {"reward": 1.0}


def test_triplets_joined_before_their_rollout_is_known_are_re_emitted_with_its_mode(
    tmp_path: Path,
) -> None:
    # the worker reads the spans and the reward before the rollout's events (another topic)
    async def scenario(h: Harness) -> None:
        await h.send("spans", llm_span("r1", "s1", T0), key="r1")
        await h.send("spans", llm_span("r1", "s2", T0 + 10), key="r1")
        await h.send("rewards", reward("r1", "w1", 1.0, T0 + SECOND_US), key="r1")
        # a test rollout (the task's mode), then its attempt starts: that changes nothing they say
        await h.send("rollout-events", enqueued("r1").model_copy(update={"mode": "test"}), key="r1")
        await h.send("rollout-events", rollout_event("r1", "attempt_started", 1, timestamp=T0), key="r1")

    h = run_worker(tmp_path, scenario)
    sent = [
        (t["span_id"], t["version"], t["mode"], t["reward"])
        for t in h.outputs.decoded("t.triplets", "triplet")
    ]
    assert sent == [
        ("s1", 1, "", None),  # no state yet
        ("s2", 1, "", None),
        ("s1", 2, "train", None),  # the reward made the state (mode train until told otherwise)
        ("s2", 2, "train", 1.0),
        ("s1", 3, "test", None),  # the rollout's own event says test: never training data
        ("s2", 3, "test", 1.0),
    ]
    assert h.worker.lifecycle.rollouts["r1"].mode == "test"


def test_a_judge_call_is_retracted_once_its_evaluation_span_arrives(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("rollout-events", enqueued("r1", credit_assignment="final_broadcast"), key="r1")
        await h.send("spans", llm_span("r1", "s1", T0), key="r1")
        # the judge's call, below a step span, below the reward span that has not come yet
        await h.send("spans", llm_span("r1", "j1", T0 + SECOND_US, parent_span_id="step"), key="r1")
        await h.send("rewards", reward("r1", "w1", 1.0, T0 + 3 * SECOND_US), key="r1")
        assert newest(h)["r1/j1"]["reward"] == 1.0  # not known as a judge yet
        await h.send(
            "spans", llm_span("r1", "step", T0 + 2 * SECOND_US, kind="agent", parent_span_id="ev"), key="r1"
        )
        await h.send("spans", llm_span("r1", "ev", T0 + 2 * SECOND_US, kind="reward"), key="r1")
        # a judge marked on its own span, and one inside an evaluate operation
        marked = with_attributes(llm_span("r1", "j2", T0 + SECOND_US), **{genai.JUDGE: True})
        await h.send("spans", marked, key="r1")
        evaluate = with_attributes(
            llm_span("r1", "op", T0 + SECOND_US, kind="other"),
            **{genai.OPERATION_NAME: genai.OPERATION_EVALUATE},
        )
        await h.send("spans", evaluate, key="r1")
        await h.send("spans", llm_span("r1", "j3", T0 + SECOND_US, parent_span_id="op"), key="r1")

    h = run_worker(tmp_path, scenario)
    final = newest(h)
    assert final["r1/s1"]["reward"] == 1.0 and not final["r1/s1"]["retracted"]
    assert final["r1/s1"]["step"] == 0
    assert final["r1/j1"]["retracted"] and final["r1/j1"]["reward"] is None
    assert final["r1/j1"]["reward_dimensions"] == {}
    assert set(final) == {"r1/s1", "r1/j1"}  # j2 and j3 were known judges at once: no triplet


def test_judge_calls_give_uncredited_triplets_when_asked(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("spans", llm_span("r1", "ev", T0 + 2 * SECOND_US, kind="reward"), key="r1")
        await h.send("spans", llm_span("r1", "s1", T0), key="r1")
        await h.send("spans", llm_span("r1", "j1", T0 + SECOND_US, parent_span_id="ev"), key="r1")
        await h.send("rewards", reward("r1", "w1", 1.0, T0 + 3 * SECOND_US), key="r1")

    h = run_worker(tmp_path, scenario, train_on_judge_calls=True)
    final = newest(h)
    assert final["r1/s1"]["reward"] == 1.0
    assert final["r1/j1"]["reward"] is None and not final["r1/j1"]["retracted"]


def test_the_same_call_captured_twice_gives_one_triplet(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        outer = llm_span("r1", "outer", T0 + 2 * SECOND_US)  # nested instrumentation: ends last
        inner = llm_span("r1", "inner", T0 + SECOND_US, parent_span_id="outer")
        await h.send("spans", with_attributes(outer, **{genai.RESPONSE_ID: "chatcmpl-1"}), key="r1")
        await h.send("spans", with_attributes(inner, **{genai.RESPONSE_ID: "chatcmpl-1"}), key="r1")
        await h.send("rewards", reward("r1", "w1", 1.0, T0 + 3 * SECOND_US), key="r1")

    h = run_worker(tmp_path, scenario)
    final = newest(h)
    assert final["r1/inner"]["reward"] == 1.0 and final["r1/inner"]["step"] == 0
    assert final["r1/outer"]["retracted"]  # emitted before its inner copy came, then withdrawn


def test_reward_dimensions_are_credited_apart(tmp_path: Path) -> None:
    """Two dimensions of 0.6 at the end of a one-call rollout: 0.6 each, never 1.2 on the call."""

    async def scenario(h: Harness) -> None:
        await h.send("rollout-events", enqueued("r1", credit_assignment="first_occurrence"), key="r1")
        await h.send("spans", llm_span("r1", "s1", T0), key="r1")
        await h.send("rewards", named_reward("r1", "w1", "format", 0.6, T0 + SECOND_US), key="r1")
        await h.send("rewards", named_reward("r1", "w2", "correctness", 0.6, T0 + SECOND_US), key="r1")

    h = run_worker(tmp_path, scenario)
    final = newest(h)["r1/s1"]
    assert final["reward_dimensions"] == {"correctness": 0.6, "format": 0.6}
    assert final["reward"] == 0.6  # the primary dimension: no "reward" dimension, so the smallest name


def test_the_changelog_holds_the_state_after_the_event_encoded_once(tmp_path: Path) -> None:
    """The size check's bytes are what the changelog gets: they must be the state *after* changes()."""

    async def scenario(h: Harness) -> None:
        await h.send("spans", llm_span("r1", "s1", T0), key="r1")
        await h.send("rewards", reward("r1", "w1", 1.0, T0 + SECOND_US), key="r1")

    h = run_worker(tmp_path, scenario)
    last = h.outputs.to("t.streams-joins-changelog")[-1]
    saved = json.loads(last.value or b"")
    record = h.worker.joiner.joins["r1"]
    assert saved == {"join": record.join.to_dict(), "at": record.locations}
    assert saved["join"]["emitted"]["s1"][0] == 2  # uncredited, then credited
    assert record.encoded is None  # used once


def test_a_state_too_large_for_the_changelog_is_dead_lettered_and_sends_nothing(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        joiner = h.worker.joiner
        joiner._serdes = dataclasses.replace(joiner._serdes, record_limit=600)
        await h.send("spans", llm_span("r1", "s1", T0), key="r1")
        for i in range(10):  # the state grows past the limit
            await h.send("rewards", reward("r1", f"reward-{i:04d}", 1.0, T0 + SECOND_US), key="r1")

    h = run_worker(tmp_path, scenario)
    dead = h.outputs.to("t.dead-letter")
    assert dead and all(dict(d.headers or [])[HEADER_DLQ_SOURCE].startswith(b"t.rewards/") for d in dead)
    saved = json.loads(h.outputs.to("t.streams-joins-changelog")[-1].value or b"")
    sent = h.outputs.decoded("t.triplets", "triplet")
    # what was sent is what the saved state says was emitted: nothing of a refused state went out
    assert {t["span_id"]: t["version"] for t in sent} == {
        k: v for k, (v, _) in saved["join"]["emitted"].items()
    }
