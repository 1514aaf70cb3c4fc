"""The Tansu workarounds of ``streams/app.py`` re-judged on Apache Kafka (verdicts: docs/architecture.md,
"On Apache Kafka: the Tansu workarounds").

Each workaround must change nothing on a broker that does not need it: the Fetch end offset equals
ListOffsets(LATEST) there, and over a normal run the gap guard re-reads nothing and accepts no gap,
and the commit guard refuses no commit. A ``tansu_only`` test keeps the quirk that made (a) necessary
on record, so that the day Tansu fixes it the workaround can go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from faust.types import TP

from agentstream.producers.client import AgentStream
from agentstream.settings import Settings
from agentstream.streams.app import GapGuard, fetch_end_offsets
from tests.helpers import WorkerProcess, emit_finished_rollout, latest_by, read_topic, wait_for

PARTITIONS = 4


def _produce_batches(settings: Settings, topic: str) -> None:
    """Several multi-record batches per partition: Tansu's ListOffsets answers the last batch's
    base offset + 1, so it trails the end exactly when the last batch holds more than one record."""
    producer = Producer(settings.producer_config(**{"linger.ms": 50, "message.timeout.ms": 30_000}))
    for round_ in range(3):
        for partition in range(PARTITIONS):
            for i in range(5 + partition):
                producer.produce(topic, value=f"{round_}-{i}".encode(), partition=partition)
        assert producer.flush(60) == 0


def _ends(settings: Settings, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """(Fetch high watermark, ListOffsets LATEST) per partition."""
    tps = [TP(topic, p) for p in range(PARTITIONS)]
    fetched = fetch_end_offsets(settings.consumer_config("unused"), tps)
    consumer = Consumer(settings.consumer_config(f"{topic}-listoffsets"))
    try:
        listed = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()
    return {tp.partition: end for tp, end in fetched.items()}, listed


@pytest.fixture
def batched_topic(settings: Settings) -> str:
    topic = settings.topic("workaround-ends")
    admin = AdminClient(settings.admin_config())
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(30)
    _produce_batches(settings, topic)
    return topic


def test_fetch_end_offset_equals_list_offsets_latest(
    broker_kind: str, batched_topic: str, settings: Settings
) -> None:
    """(a) On Apache Kafka the Fetch high watermark and ListOffsets(LATEST) agree on every partition,
    so reading the end from a Fetch response changes nothing there."""
    if broker_kind != "apache":
        pytest.skip("Tansu's ListOffsets trails the end: see test_tansu_list_offsets_trails_the_end")
    fetched, listed = _ends(settings, batched_topic)
    assert fetched == listed
    assert fetched == {p: 3 * (5 + p) for p in range(PARTITIONS)}  # every record, nothing else


@pytest.mark.tansu_only
def test_tansu_list_offsets_trails_the_end(batched_topic: str, settings: Settings) -> None:
    """(a) The quirk the workaround exists for: on Tansu, ListOffsets(LATEST) answers the newest
    batch's base offset + 1, short of the Fetch high watermark."""
    fetched, listed = _ends(settings, batched_topic)
    assert any(listed[p] < fetched[p] for p in range(PARTITIONS)), (fetched, listed)


# ---- (b) the gap guard and (c) the commit guard over a normal run -----------------------------------
@pytest.fixture
def stream_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "streams": settings.streams.model_copy(
                update={
                    "session_timeout_ms": 2_000,
                    "heartbeat_interval_ms": 400,
                    "commit_interval_seconds": 0.5,
                    "default_credit_assignment": "final_broadcast",
                }
            )
        }
    )


@pytest.fixture
def workers(stream_settings: Settings) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


@pytest.mark.apache_only
def test_gap_and_commit_guards_stay_idle_on_apache(
    stream_settings: Settings, workers: list[WorkerProcess]
) -> None:
    """(b) + (c) Rollouts stream in from two producer threads while a second worker joins (a
    rebalance mid-stream): every rollout ends, and neither guard ever acted."""
    settings = stream_settings
    workers.append(WorkerProcess(settings, "worker-a").start().wait_ready())
    n = 400

    def produce(start: int) -> None:
        with AgentStream(settings) as client:
            for i in range(start, n, 2):
                emit_finished_rollout(client, f"g{i:05d}", [(f"q{i}", "a")])
                if i % 40 == 0:
                    time.sleep(0.1)
            client.flush(30)

    threads = [threading.Thread(target=produce, args=(start,)) for start in (0, 1)]
    for thread in threads:
        thread.start()
    workers.append(WorkerProcess(settings, "worker-b").start())
    for thread in threads:
        thread.join(120)
    workers[1].wait_ready()

    def all_succeeded() -> dict[str, Any] | None:
        states = latest_by(
            read_topic(settings, settings.topic("rollout-state"), timeout=10), "rollout_id", "version"
        )
        done = len(states) == n and all(s["status"] == "succeeded" for s in states.values())
        return states if done else None

    assert wait_for(all_succeeded, 90, interval=1.0), "not every rollout succeeded"
    # the status files are rewritten every second: wait for ones written after the last commit
    uptimes = [(worker.status() or {}).get("uptime_s", 0.0) for worker in workers]
    for worker, uptime in zip(workers, uptimes, strict=True):
        assert wait_for(lambda w=worker, u=uptime: (w.status() or {}).get("uptime_s", 0.0) > u + 2.0, 30)
    statuses = [worker.status() or {} for worker in workers]
    for status in statuses:
        assert status["gap_rereads"] == 0, statuses
        assert status["gaps_accepted"] == 0, statuses
        assert status["commits_refused"] == 0, statuses
        assert status["duplicates_dropped"] == 0, statuses
    assert sum(status["events"] for status in statuses) >= 3 * n


def test_gap_guard_counts_rereads_and_accepted_gaps() -> None:
    """The counters the Apache test reads: a jump is re-read until ``verify_seconds`` pass, then
    accepted and counted (no broker needed)."""

    class Record:
        def __init__(self, offset: int) -> None:
            self.offset = offset

    tp = TP("t", 0)
    guard = GapGuard(verify_seconds=1.0, guarded_topics={"t"})
    guard.seek(tp, 0)
    accepted, seek = guard.filter(tp, [Record(0), Record(1), Record(3)], now=0.0)
    assert [r.offset for r in accepted] == [0, 1] and seek == 2
    assert (guard.rereads, guard.gaps_accepted) == (1, 0)
    accepted, seek = guard.filter(tp, [Record(1), Record(3)], now=2.0)
    assert [r.offset for r in accepted] == [3] and seek is None
    assert (guard.rereads, guard.gaps_accepted, guard.duplicates_dropped) == (1, 1, 1)
