"""Rebalances under load: a two-lane sink whose lanes pause for back-pressure keeps every partition
flowing when a second sink joins its group and later leaves (issue 13: partitions of a lane that was
paused at a rebalance came back paused and were never read again)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from confluent_kafka import Producer, TopicPartition

from agentstream.schemas import AvroSerializer, load_schema
from agentstream.settings import Settings
from agentstream.sinks.clickhouse import ClickHouseSink
from agentstream.sinks.migrations import migrate
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

RECORDS = 100_000


def _produce(settings: Settings, count: int, backlog: threading.Event, done: threading.Event) -> None:
    """Small spans on every partition: half of them before the sink starts (a backlog it works
    through in small batches, pausing lanes for back-pressure), the rest while it runs."""
    encode = AvroSerializer(load_schema("span"))
    producer = Producer(settings.producer_config())
    topic = settings.topic("spans")
    for i in range(count):
        rollout = f"r{i % 64}"
        value = encode(
            {"trace_id": rollout, "span_id": f"s{i}", "rollout_id": rollout, "name": "step",
             "start_time": 1_700_000_000_000_000 + i, "end_time": 1_700_000_000_000_001 + i}
        )  # fmt: skip
        while True:
            try:
                producer.produce(topic, value, rollout.encode())
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1_000 == 999:
            producer.poll(0)
        if i == count // 2:
            producer.flush(60)
            backlog.set()
    assert producer.flush(60) == 0
    done.set()


@contextmanager
def _running(settings: Settings, connect: Callable[[], Any]) -> Iterator[ClickHouseSink]:
    sink = ClickHouseSink(settings, connect(), connect=connect)
    sink.prepare()
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), name="test-sink")
    thread.start()
    try:
        yield sink
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive()


def test_two_lane_sink_loses_and_stalls_nothing_when_a_second_sink_joins_and_leaves(
    settings: Settings, clickhouse: Any, chdb_path: Path
) -> None:
    fast = _sink_settings(
        settings,
        insert_lanes=2,
        batch_max_rows=1_000,  # a lane's next batch fills up while one is inserted
        lag_check_seconds=0,  # no stall detector to resume stuck partitions: the rebalance must not stall any
    )

    def connect() -> Any:
        return clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=clickhouse.database)

    def landed() -> int:
        return int(clickhouse.command("SELECT count() FROM spans"))

    migrate(clickhouse)
    # Every insert into spans takes a while (as behind a heavy materialized view): while a lane's
    # insert runs, its next batch fills up and the lane pauses its partitions.
    clickhouse.command(
        "CREATE MATERIALIZED VIEW slow_spans ENGINE = Null AS SELECT sleep(0.5) AS s FROM spans"
    )
    backlog, produced = threading.Event(), threading.Event()
    producer = threading.Thread(
        target=_produce, args=(fast, RECORDS, backlog, produced), name="test-producer"
    )
    producer.start()
    assert backlog.wait(60)
    with _running(fast, connect) as first:
        for _ in range(2):
            # rebalance while a lane of the first sink is paused for back-pressure (that is what stalled)
            wait_for(lambda: _paused(first), timeout=10)
            with _running(fast, connect) as second:  # joins the group: both rebalance
                assert wait_for(lambda: second.stats.assigned > 0, timeout=60), second.stats.as_dict()
                wait_for(lambda: _paused(first), timeout=10)
            # the second one left: the first one takes every partition again
        producer.join(120)
        assert produced.is_set()
        assert wait_for(lambda: landed() >= RECORDS, timeout=90), (landed(), first.stats.as_dict())
        count, ids, coordinates = clickhouse.query(
            "SELECT count(), uniqExact(span_id), uniqExact(_partition, _offset) FROM spans"
        ).result_rows[0]
        assert (count, ids, coordinates) == (RECORDS, RECORDS, RECORDS), first.stats.as_dict()


def test_a_partition_stalled_behind_the_sinks_back_is_reported_and_resumed(
    settings: Settings, clickhouse: Any, chdb_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fast = _sink_settings(settings, insert_lanes=2, lag_check_seconds=0.5)
    topic = fast.topic("spans")

    def connect() -> Any:
        return clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=clickhouse.database)

    def landed() -> int:
        return int(clickhouse.command("SELECT count() FROM spans"))

    caplog.set_level(logging.WARNING, logger="agentstream.sinks")
    with _running(fast, connect) as sink:
        _send(fast, range(0, 400))
        assert wait_for(lambda: landed() >= 400, timeout=60), sink.stats.as_dict()
        # librdkafka stops fetching the partition; the sink's lanes know nothing of it
        assert sink._consumer is not None
        sink._consumer.pause([TopicPartition(topic, 0)])
        _send(fast, range(400, 800), partition=0)  # only there: no lane fills a batch or pauses
        assert wait_for(lambda: landed() >= 800, timeout=60), sink.stats.as_dict()
        assert wait_for(lambda: sink.stats.stalled_partitions == 0, timeout=30), sink.stats.as_dict()
        status = sink.stats.as_dict()
    assert status["stalls_detected"] >= 1, status
    assert f"{topic}/0" in status["lag"], status
    warnings = [r.getMessage() for r in caplog.records if "is stalled" in r.getMessage()]
    assert warnings and all(f"{topic} [0]" in w for w in warnings), warnings
    assert len(warnings) == status["stalls_detected"]  # once per episode, not once per check
    assert landed() == 800


def _sink_settings(settings: Settings, **sink: Any) -> Settings:
    return settings.model_copy(
        update={"sink": settings.sink.model_copy(update={"session_timeout_ms": 2000, **sink})}
    )


def _send(settings: Settings, ids: range, partition: int | None = None) -> None:
    encode = AvroSerializer(load_schema("span"))
    producer = Producer(settings.producer_config())
    for i in ids:
        value = encode(
            {"trace_id": "t", "span_id": f"s{i}", "rollout_id": f"r{i}", "name": "step",
             "start_time": 1_700_000_000_000_000 + i, "end_time": 1_700_000_000_000_001 + i}
        )  # fmt: skip
        if partition is None:
            producer.produce(settings.topic("spans"), value, f"r{i}".encode())
        else:
            producer.produce(settings.topic("spans"), value, f"r{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def _paused(sink: ClickHouseSink) -> bool:
    return any(lane.paused for lane in sink._lanes)
