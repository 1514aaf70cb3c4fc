"""The per-version metrics hop driven through Faust's ``test_context()``: ended rollouts and late
rewards -> the metric-partials table -> the flush timer -> metrics records."""

from __future__ import annotations

from pathlib import Path

from agentstream.streams import metrics as version_metrics
from tests.unit.test_streams_worker import (
    PARTITION,
    SECOND_US,
    Harness,
    enqueued,
    reward,
    rollout_event,
    run_worker,
)

T0 = 1_700_000_000 * SECOND_US


async def a_rollout_succeeds_with_a_reward(h: Harness) -> None:
    await h.send("rollout-events", enqueued("r1", max_attempts=1), key="r1")
    await h.send("rollout-events", rollout_event("r1", "attempt_started", 1, timestamp=T0), key="r1")
    await h.send("rewards", reward("r1", "w1", 0.5, T0 + SECOND_US), key="r1")
    finished = rollout_event(
        "r1", "attempt_finished", 1, status="succeeded", timestamp=T0 + 2 * SECOND_US, resources={"p": "v3"}
    )
    await h.send("rollout-events", finished, key="r1")


def test_an_ended_rollout_is_flushed_as_a_metrics_record_once(tmp_path: Path) -> None:
    h = run_worker(tmp_path, a_rollout_succeeds_with_a_reward, metrics_window_seconds=60.0)
    metrics = h.worker.metrics
    metrics.flush(T0 + 5 * SECOND_US)
    metrics.flush(T0 + 6 * SECOND_US)  # nothing changed: nothing sent
    [sent] = h.outputs.to("t.metrics")
    [record] = h.outputs.decoded("t.metrics", "version_metrics")
    start, end = version_metrics.window_of(T0 + 2 * SECOND_US, 60.0)
    assert sent.key == version_metrics.partial_key("p", "v3", start, PARTITION).encode()
    assert (record["resource_name"], record["resource_version"], record["source_partition"]) == (
        "p",
        "v3",
        PARTITION,
    )
    assert record["rollouts"] == 1 and record["succeeded"] == 1 and record["revision"] == 1
    assert record["rewards"] == 1 and record["reward_sum"] == 0.5
    assert record["emitted_at"] == T0 + 5 * SECOND_US
    assert h.worker.stats.metrics_emitted == 1
    # the partial itself is table state, on its changelog, on the rollouts' partition
    assert {c.partition for c in h.outputs.to("t.streams-metric-partials-changelog")} == {PARTITION}


def test_a_late_reward_revises_the_partial(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await a_rollout_succeeds_with_a_reward(h)
        h.worker.metrics.flush(T0 + 5 * SECOND_US)
        await h.send("rewards", reward("r1", "w2", 1.0, T0 + 30 * SECOND_US), key="r1")

    h = run_worker(tmp_path, scenario)
    h.worker.metrics.flush(T0 + 40 * SECOND_US)
    first, revised = h.outputs.decoded("t.metrics", "version_metrics")
    assert (first["revision"], revised["revision"]) == (1, 2)
    assert (revised["rewards"], revised["reward_sum"]) == (2, 1.5)
