"""The per-version metrics hop driven through Faust's ``test_context()``: ended rollouts and late
rewards -> the metric-partials table -> the flush timer -> metrics records."""

from __future__ import annotations

import copy
from pathlib import Path

from agentstream.schemas import (
    AvroDeserializer,
    AvroSchema,
    AvroSerializer,
    RolloutConfig,
    SchemaStore,
    VersionMetrics,
)
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
    assert sent.key == version_metrics.partial_key("p", "v3", start, PARTITION, "train").encode()
    assert (record["resource_name"], record["resource_version"], record["source_partition"]) == (
        "p",
        "v3",
        PARTITION,
    )
    assert record["mode"] == "train"  # a rollout enqueued without a mode is traffic
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


def test_rollouts_of_each_mode_are_counted_in_partials_of_their_own(tmp_path: Path) -> None:
    """A pinned evaluation (mode val) of the same version, window and partition is a partial of its
    own, so the promotion controller can leave it out."""

    async def scenario(h: Harness) -> None:
        await a_rollout_succeeds_with_a_reward(h)  # mode train
        for rollout_id, mode in (("r2", "val"), ("r3", "val"), ("r4", "prod")):
            event = rollout_event(
                rollout_id, "task_enqueued", task="{}", config=RolloutConfig(max_attempts=1), mode=mode
            )
            await h.send("rollout-events", event, key=rollout_id)
            await h.send(
                "rollout-events",
                rollout_event(rollout_id, "attempt_started", 1, timestamp=T0),
                key=rollout_id,
            )
            finished = rollout_event(
                rollout_id,
                "attempt_finished",
                1,
                status="failed",
                timestamp=T0 + 3 * SECOND_US,
                resources={"p": "v3"},
            )
            await h.send("rollout-events", finished, key=rollout_id)

    h = run_worker(tmp_path, scenario, metrics_window_seconds=60.0)
    h.worker.metrics.flush(T0 + 5 * SECOND_US)
    records = {r["mode"]: r for r in h.outputs.decoded("t.metrics", "version_metrics")}
    assert {m: (r["rollouts"], r["succeeded"]) for m, r in records.items()} == {
        "train": (1, 1),
        "val": (2, 0),
        "prod": (1, 0),
    }
    assert len({r["window_start"] for r in records.values()}) == 1
    assert {r["source_partition"] for r in records.values()} == {PARTITION}


def test_partial_keys_carry_the_mode_and_old_keys_still_parse() -> None:
    key = version_metrics.partial_key("p", "v3", 60, 2, "val")
    assert version_metrics.parse_key(key) == ("p", "v3", 60, 2, "val")
    old = version_metrics.SEP.join(("p", "v3", "60", "2"))  # a changelog key from before modes
    assert version_metrics.partial_key("p", "v3", 60, 2) == old
    assert version_metrics.parse_key(old) == ("p", "v3", 60, 2, "")
    record = version_metrics.to_record(old, version_metrics.empty_partial(120), 0)
    assert record.mode == "" and record.window_end == 120


def test_a_metrics_record_from_before_modes_still_decodes() -> None:
    """A partial written with the schema that had no ``mode`` reads with mode "" (every mode)."""
    definition = copy.deepcopy(VersionMetrics.avro_schema().definition)
    definition["fields"] = [f for f in definition["fields"] if f["name"] != "mode"]
    old = AvroSchema.from_definition(definition)
    record = VersionMetrics(
        resource_name="p", resource_version="3", window_start=T0, window_end=T0 + 60, rollouts=4, succeeded=3,
        emitted_at=T0,
    ).to_avro()  # fmt: skip
    del record["mode"]
    data = AvroSerializer(old)(record)
    decoded = VersionMetrics.from_avro(
        AvroDeserializer(VersionMetrics.avro_schema(), SchemaStore([old]))(data)
    )
    assert decoded.mode == "" and (decoded.rollouts, decoded.succeeded) == (4, 3)
