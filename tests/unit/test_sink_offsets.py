"""The sink's offset bookkeeping: a jump over offsets is re-read before it is believed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agentstream.schemas import AvroSerializer, Span
from agentstream.settings import Settings
from agentstream.sinks.clickhouse import ClickHouseSink, _Lane

TOPIC = "t.spans"


class Message:
    def __init__(self, offset: int, value: bytes) -> None:
        self._offset, self._value = offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"ro-1"

    def headers(self) -> list[tuple[str, bytes]]:
        return [("agentstream-id", f"s{self._offset}".encode())]


class Consumer:
    def __init__(self) -> None:
        self.seeks: list[int] = []

    def seek(self, tp: Any) -> None:
        self.seeks.append(tp.offset)


@pytest.fixture
def record() -> bytes:
    span = Span(trace_id="t" * 32, span_id="s" * 16, rollout_id="ro-1", name="n", start_time=1, end_time=2)
    return AvroSerializer(Span.avro_schema())(span.to_avro())


def _sink(gap_verify_seconds: float) -> tuple[ClickHouseSink, Consumer]:
    settings = Settings(
        bootstrap_servers="127.0.0.1:1", topic_prefix="t.", sink={"gap_verify_seconds": gap_verify_seconds}
    )
    sink = ClickHouseSink(settings, client=None)
    sink._lanes = [_Lane(0, writer=None)]  # type: ignore[arg-type]
    consumer = Consumer()
    sink._consumer = consumer  # type: ignore[assignment]
    sink._track(TOPIC, 0, stored=-1, start=0)
    return sink, consumer


def _round(sink: ClickHouseSink, record: bytes, *offsets: int) -> None:
    sink._round += 1
    for offset in offsets:
        sink._add(Message(offset, record))


def _batched(sink: ClickHouseSink) -> list[int]:
    (table,) = sink._lanes[0].batch.tables.values()
    return [entry.offset for group in table.groups.values() for entry in group]


def test_a_gap_is_read_again_and_closes(record: bytes) -> None:
    sink, consumer = _sink(gap_verify_seconds=5)
    _round(sink, record, 0, 1, 4, 5)  # 2 and 3 not exposed yet
    assert consumer.seeks == [2] and _batched(sink) == [0, 1]
    _round(sink, record, 2, 3, 4, 5)  # read again from 2
    assert _batched(sink) == [0, 1, 2, 3, 4, 5]
    assert sink._partitions[(TOPIC, 0)].gap_round == 0 and sink.stats.gaps_accepted == 0


def test_a_real_gap_is_accepted_after_the_verify_window(record: bytes) -> None:
    sink, consumer = _sink(gap_verify_seconds=0.2)
    _round(sink, record, 0, 2)
    _round(sink, record, 2)  # still no offset 1: read again
    assert consumer.seeks == [1, 1] and _batched(sink) == [0]
    time.sleep(0.25)
    _round(sink, record, 2, 3)
    assert _batched(sink) == [0, 2, 3] and sink.stats.gaps_accepted == 1


def test_gaps_are_accepted_at_once_when_verification_is_off(record: bytes) -> None:
    sink, consumer = _sink(gap_verify_seconds=0)
    _round(sink, record, 0, 5, 6)
    assert consumer.seeks == [] and _batched(sink) == [0, 5, 6] and sink.stats.gaps_accepted == 1
