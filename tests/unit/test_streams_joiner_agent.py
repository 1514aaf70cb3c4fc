"""The triplet joiner hop driven through Faust's ``test_context()``: LLM-call spans + rewards -> the
joins table -> triplets, with rewards also counted on the rollout's state."""

from __future__ import annotations

from pathlib import Path

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

    h = run_worker(tmp_path, scenario)
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

    h = run_worker(tmp_path, scenario)
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

    h = run_worker(tmp_path, scenario, late_reward_horizon_seconds=10.0)
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
