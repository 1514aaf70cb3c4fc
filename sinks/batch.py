"""What the sink collects between inserts: records per table, with their Kafka coordinates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentstream.schemas import AvroSchema, load_schema
from agentstream.topics.catalogue import (
    DEAD_LETTER,
    DECISIONS,
    METRICS,
    RESOURCE_LABELS,
    RESOURCES,
    REWARDS,
    ROLLOUT_EVENTS,
    ROLLOUT_STATE,
    SPANS,
    TRIPLETS,
    TopicSpec,
)


@dataclass(frozen=True)
class SinkTable:
    """Which topic feeds which table; ``id_column`` identifies re-sent records."""

    topic: TopicSpec
    table: str
    id_column: str | None = None
    #: records are Avro of the topic's value schema (else raw rows, e.g. dead letters)
    avro: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "avro", self.topic.value_schema is not None)

    @property
    def record_name(self) -> str | None:
        return load_schema(self.topic.value_schema).name if self.topic.value_schema else None


SINK_TABLES: tuple[SinkTable, ...] = (
    SinkTable(SPANS, "spans", "span_id"),
    SinkTable(REWARDS, "rewards", "reward_id"),
    SinkTable(ROLLOUT_EVENTS, "rollout_events", "event_id"),
    SinkTable(TRIPLETS, "triplets"),
    SinkTable(ROLLOUT_STATE, "rollout_states"),
    SinkTable(METRICS, "version_metrics"),
    SinkTable(RESOURCES, "resource_versions"),
    SinkTable(RESOURCE_LABELS, "resource_labels"),
    SinkTable(DECISIONS, "promotion_decisions", "decision_id"),
    SinkTable(DEAD_LETTER, "dead_letters"),
)


@dataclass(slots=True)
class Entry:
    """One Avro record on its way to a table."""

    partition: int
    offset: int
    coordinates: bytes  # encoded _topic_id, _partition, _offset (the wrapper schema's first fields)
    value: bytes  # the record as consumed: framing header + Avro body
    key: bytes | None
    header_len: int
    event_id: bytes | None
    replay: bool


def chunks(entries: list[Entry]) -> list[bytes | memoryview]:
    """Each record's coordinates and Avro body, without copying the body."""
    out: list[bytes | memoryview] = []
    append = out.append
    for entry in entries:
        append(entry.coordinates)
        append(memoryview(entry.value)[entry.header_len :])
    return out


@dataclass
class TableBatch:
    sink_table: SinkTable
    #: writer schema -> entries, in consumption order
    groups: dict[AvroSchema, list[Entry]] = field(default_factory=dict)
    #: dead-letter rows (the dead-letter topic is not Avro)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    row_offsets: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(map(len, self.groups.values())) + len(self.rows)


@dataclass
class Batch:
    tables: dict[str, TableBatch] = field(default_factory=dict)
    #: (topic, partition) -> last offset consumed into this batch
    last_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: (message, reason, error class) of records refused before any insert
    dead_letters: list[tuple[Any, str, str]] = field(default_factory=list)
    started: float = 0.0
    records: int = 0
    bytes: int = 0

    def table(self, sink_table: SinkTable) -> TableBatch:
        batch = self.tables.get(sink_table.table)
        if batch is None:
            batch = self.tables[sink_table.table] = TableBatch(sink_table)
        return batch
