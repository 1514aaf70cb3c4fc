"""The lifecycle hop driven through Faust's ``test_context()``: rollout events -> the rollouts table
(changelog: rollout-state) -> tasks, dead letters, and the attempt timer."""

from __future__ import annotations

from pathlib import Path

from agentstream.schemas import AvroDeserializer, RolloutStatus, load_schema
from agentstream.topics.catalogue import HEADER_DLQ_REASON, HEADER_DLQ_SOURCE, HEADER_EVENT_ID
from tests.unit.test_streams_worker import PARTITION, SECOND_US, Harness, enqueued, rollout_event, run_worker

ENQUEUED_AT = 1_700_000_000_000_000


def test_an_enqueued_rollout_is_saved_and_its_task_sent(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        event = enqueued("r1", max_attempts=2).model_copy(update={"timestamp": ENQUEUED_AT})
        await h.send("rollout-events", event, key="r1")

        state = h.worker.lifecycle.rollouts["r1"]
        assert state.status == RolloutStatus.QUEUING
        assert [a.attempt_id for a in state.attempts] == ["r1#1"]

    h = run_worker(tmp_path, scenario)
    [task] = h.outputs.to("t.tasks")
    assert task.key == b"r1" and task.headers == [(HEADER_EVENT_ID, b"r1#1")]
    [decoded] = h.outputs.decoded("t.tasks", "task")
    assert (decoded["rollout_id"], decoded["attempt_number"], decoded["input"]) == ("r1", 1, '{"q": 1}')
    # the state goes to its changelog, the compacted rollout-state topic, on the event's partition
    [changelog] = h.outputs.to("t.rollout-state")
    assert changelog.key == b"r1" and changelog.partition == PARTITION
    saved = AvroDeserializer(load_schema("rollout_state"))(changelog.value)
    # its version is the event's time (microseconds), so a state rebuilt later outranks it
    assert saved["status"] == "queuing" and saved["version"] == ENQUEUED_AT
    assert h.worker.stats.events == 1 and h.worker.stats.tasks == 1


def test_a_failed_attempt_is_retried_then_the_rollout_ends(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("rollout-events", enqueued("r1", max_attempts=2), key="r1")
        await h.send("rollout-events", rollout_event("r1", "attempt_started", 1), key="r1")
        finished = rollout_event("r1", "attempt_finished", 1, status="failed", error="boom")
        await h.send("rollout-events", finished, key="r1")
        assert h.worker.lifecycle.rollouts["r1"].status == RolloutStatus.REQUEUING
        await h.send(
            "rollout-events", rollout_event("r1", "attempt_finished", 2, status="succeeded"), key="r1"
        )

    h = run_worker(tmp_path, scenario)
    assert h.worker.lifecycle.rollouts["r1"].status == RolloutStatus.SUCCEEDED
    assert [t["attempt_number"] for t in h.outputs.decoded("t.tasks", "task")] == [1, 2]
    # an ended rollout is counted in its version's metric partial
    [partial] = [p for p in h.worker.metrics.metric_partials.values() if p is not None]
    assert partial["rollouts"] == 1 and partial["succeeded"] == 1


def test_a_redelivered_event_resends_the_task_of_a_queued_attempt(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("rollout-events", enqueued("r1"), key="r1")
        await h.send("rollout-events", enqueued("r1"), key="r1")  # same event id: a redelivery

    h = run_worker(tmp_path, scenario)
    assert [t.headers for t in h.outputs.to("t.tasks")] == [[(HEADER_EVENT_ID, b"r1#1")]] * 2
    assert len(h.outputs.to("t.rollout-state")) == 1  # the state did not change
    assert h.worker.stats.resent == 1


def test_an_undecodable_event_goes_to_the_dead_letter_topic(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("rollout-events", b"not avro", key="r1")
        await h.send("rollout-events", enqueued("r2"), key="r2")  # the partition goes on

    h = run_worker(tmp_path, scenario)
    [dead] = h.outputs.to("t.dead-letter")
    assert dead.key == b"r1" and dead.value == b"not avro"
    headers = dict(dead.headers or [])
    assert headers[HEADER_DLQ_SOURCE] == f"t.rollout-events/{PARTITION}/0".encode()
    assert b"MalformedRecordError" in headers[HEADER_DLQ_REASON]
    assert h.worker.stats.dead_lettered == 1
    assert h.worker.lifecycle.rollouts["r2"] is not None


def test_the_timer_times_out_an_overdue_attempt_once(tmp_path: Path) -> None:
    started_us = 1_700_000_000 * SECOND_US

    async def scenario(h: Harness) -> None:
        await h.send("rollout-events", enqueued("r1", timeout_seconds=5.0), key="r1")
        started = rollout_event("r1", "attempt_started", 1, timestamp=started_us)
        await h.send("rollout-events", started, key="r1")

    h = run_worker(tmp_path, scenario)
    lifecycle = h.worker.lifecycle
    lifecycle.fire_overdue({PARTITION}, started_us + 4 * SECOND_US)
    assert h.outputs.to("t.rollout-events") == []  # not due yet
    lifecycle.fire_overdue({PARTITION}, started_us + 6 * SECOND_US)
    lifecycle.fire_overdue({PARTITION}, started_us + 7 * SECOND_US)
    [timeout] = h.outputs.decoded("t.rollout-events", "rollout_event")
    assert timeout["type"] == "attempt_timeout" and timeout["attempt_id"] == "r1#1"
    assert timeout["event_id"] == "r1#1:attempt_timeout"
    assert timeout["worker_id"] == h.settings.streams.app_id
    assert h.worker.stats.timers_fired == 1


def test_the_timer_forgets_rollouts_of_partitions_no_longer_assigned(tmp_path: Path) -> None:
    started_us = 1_700_000_000 * SECOND_US

    async def scenario(h: Harness) -> None:
        await h.send("rollout-events", enqueued("r1", timeout_seconds=1.0), key="r1")
        await h.send(
            "rollout-events", rollout_event("r1", "attempt_started", 1, timestamp=started_us), key="r1"
        )

    h = run_worker(tmp_path, scenario)
    h.worker.lifecycle.fire_overdue({PARTITION + 1}, started_us + 60 * SECOND_US)  # revoked
    h.worker.lifecycle.fire_overdue({PARTITION}, started_us + 60 * SECOND_US)  # back: not watched
    assert h.outputs.to("t.rollout-events") == []


def test_spans_keep_an_attempt_responsive(tmp_path: Path) -> None:
    started_us = 1_700_000_000 * SECOND_US

    async def scenario(h: Harness) -> None:
        await h.send("rollout-events", enqueued("r1", unresponsive_seconds=10.0), key="r1")
        await h.send(
            "rollout-events", rollout_event("r1", "attempt_started", 1, timestamp=started_us), key="r1"
        )

    h = run_worker(tmp_path, scenario)
    lifecycle = h.worker.lifecycle
    lifecycle.note_activity("r1", started_us + 8 * SECOND_US)
    lifecycle.fire_overdue({PARTITION}, started_us + 15 * SECOND_US)
    assert h.outputs.to("t.rollout-events") == []
    lifecycle.fire_overdue({PARTITION}, started_us + 19 * SECOND_US)
    [event] = h.outputs.decoded("t.rollout-events", "rollout_event")
    assert event["type"] == "attempt_unresponsive"
