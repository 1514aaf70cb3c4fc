"""The ClickHouse sink: event topics in, one table per topic, every record exactly once.

How a record travels:

1. ``consume()`` hands over raw Kafka records; the sink reads only their framing header to find
   the writer schema (undecodable or foreign records go to the dead-letter topic with the reason).
2. Records are batched per table until the batch is big or old enough (``SinkSettings``).
3. Each table's batch becomes one ``INSERT ... FORMAT Avro``: ClickHouse decodes the Avro
   itself. The insert carries a deduplication token built from its offset ranges, and every row
   carries its Kafka coordinates.
4. Only then are offsets committed. Errors retry with backoff and never skip data; a batch that
   ClickHouse rejects is bisected against a ``Null``-engine twin of the table to find the records
   at fault, which go to the dead-letter topic while the rest is inserted.

Exactly once without transactions: after any restart or rebalance the sink resumes each
partition after the highest offset already stored in ClickHouse (read from a projection that is
written atomically with the rows), so a batch that was inserted but not committed is not inserted
again. Records re-sent by producers after an outage carry the ``agentstream-replay`` header and
are dropped when their id is already stored.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from agentstream.schemas import (
    AvroDeserializer,
    AvroSchema,
    MalformedRecordError,
    SchemaStore,
    load_schema,
    read_framing,
)
from agentstream.schemas.catalog import SchemaTopicResolver
from agentstream.schemas.serde import SOE_HEADER_LEN, SOE_MAGIC, decode_body, encode_body
from agentstream.schemas.topics import (
    DEAD_LETTER,
    HEADER_DLQ_CONSUMER,
    HEADER_DLQ_ERROR_CLASS,
    HEADER_DLQ_REASON,
    HEADER_DLQ_SOURCE,
    HEADER_EVENT_ID,
    HEADER_REPLAY,
    REWARDS,
    ROLLOUT_EVENTS,
    SCHEMAS,
    SPANS,
    TRIPLETS,
    TopicSpec,
)
from agentstream.settings import Settings

from . import ocf
from .migrations import migrate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkTable:
    """Which topic feeds which table; ``id_column`` identifies re-sent records."""

    topic: TopicSpec
    table: str
    id_column: str | None = None

    @property
    def record_name(self) -> str | None:
        return load_schema(self.topic.value_schema).name if self.topic.value_schema else None


SINK_TABLES: tuple[SinkTable, ...] = (
    SinkTable(SPANS, "spans", "span_id"),
    SinkTable(REWARDS, "rewards", "reward_id"),
    SinkTable(ROLLOUT_EVENTS, "rollout_events", "event_id"),
    SinkTable(TRIPLETS, "triplets"),
    SinkTable(DEAD_LETTER, "dead_letters"),
)


@dataclass(slots=True)
class _Entry:
    partition: int
    offset: int
    coordinates: bytes  # encoded _topic_id, _partition, _offset
    value: bytes  # the record as consumed (framing header + Avro body)
    key: bytes | None
    header_len: int
    event_id: bytes | None
    replay: bool

    @property
    def avro_body(self) -> bytes:
        return self.value[self.header_len :]


def _chunks(entries: list[_Entry]) -> list[bytes]:
    chunks = []
    for entry in entries:
        chunks.append(entry.coordinates)
        chunks.append(entry.value[entry.header_len :])
    return chunks


@dataclass
class _TableBatch:
    sink_table: SinkTable
    #: writer schema -> entries, in consumption order
    groups: dict[AvroSchema, list[_Entry]] = field(default_factory=dict)
    #: dead-letter rows (not Avro)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    row_offsets: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(map(len, self.groups.values())) + len(self.rows)


@dataclass
class _Batch:
    tables: dict[str, _TableBatch] = field(default_factory=dict)
    #: (topic, partition) -> last offset consumed
    last_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    dead_letters: list[tuple[Any, str, str]] = field(default_factory=list)
    started: float = 0.0
    records: int = 0
    bytes: int = 0

    def table(self, sink_table: SinkTable) -> _TableBatch:
        batch = self.tables.get(sink_table.table)
        if batch is None:
            batch = self.tables[sink_table.table] = _TableBatch(sink_table)
        return batch


class _Abandoned(Exception):
    """The batch was given up because its partitions were revoked."""


@dataclass
class SinkStats:
    records: int = 0
    rows: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    replay_duplicates_dropped: int = 0
    already_stored_skipped: int = 0
    flushes: int = 0
    retries: int = 0
    last_flush_seconds: float = 0.0
    last_error: str = ""
    assigned: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "rows": dict(self.rows),
            "dead_lettered": self.dead_lettered,
            "replay_duplicates_dropped": self.replay_duplicates_dropped,
            "already_stored_skipped": self.already_stored_skipped,
            "flushes": self.flushes,
            "retries": self.retries,
            "last_flush_seconds": round(self.last_flush_seconds, 4),
            "last_error": self.last_error,
            "assigned_partitions": self.assigned,
        }


class ClickHouseSink:
    """Consume the event topics into ClickHouse tables, exactly once.

    Args:
        settings: resolved settings (Kafka bootstrap servers set).
        client: a clickhouse-connect client (chDB or server); migrations are applied on start.
        tables: topic -> table mapping; default :data:`SINK_TABLES`.
    """

    def __init__(self, settings: Settings, client: Any, tables: tuple[SinkTable, ...] = SINK_TABLES) -> None:
        self.settings = settings
        self.client = client
        self.config = settings.sink
        self.tables = tables
        self._by_topic = {settings.topic(t.topic.name): t for t in tables}
        self._topic_by_table = {t.table: settings.topic(t.topic.name) for t in tables}
        self._record_names = {t.table: t.record_name for t in tables}
        resolver = SchemaTopicResolver(settings.consumer_config("unused"), settings.topic(SCHEMAS.name))
        self._deserializer = AvroDeserializer(
            store=SchemaStore.shipped(resolver), registry=settings.schema_registry_url
        )
        self._dlq_topic = settings.topic(DEAD_LETTER.name)
        self._columns: dict[str, set[str]] = {}
        self._topic_ids: dict[str, str] = {}
        self._coords: dict[tuple[str, int], bytes] = {}
        self._stored: dict[tuple[str, int], int] = {}  # highest offset known to be in ClickHouse
        self._seen: dict[tuple[str, int], int] = {}  # highest offset consumed
        self._batch = _Batch()
        self._flushing = False
        self._abandon = False
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self.stats = SinkStats()
        self.on_flush: Callable[[SinkStats], None] | None = None

    # ---- setup -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Apply migrations, learn the tables' columns and create the Null-engine probe twins."""
        migrate(self.client)
        for sink_table in self.tables:
            rows = self.client.query(
                "SELECT name, default_kind FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
                parameters={"t": sink_table.table},
            ).result_rows
            if not rows:
                raise RuntimeError(f"table {sink_table.table} is missing after migrations")
            self._columns[sink_table.table] = {name for name, kind in rows if kind not in ("MATERIALIZED", "ALIAS")}
            self.client.command(
                f"CREATE TABLE IF NOT EXISTS {sink_table.table}__probe AS {sink_table.table} ENGINE = Null"
            )

    def _refresh_topic_ids(self) -> None:
        admin = AdminClient(self.settings.admin_config())
        futures = admin.describe_topics(TopicCollection(list(self._by_topic)), request_timeout=10)
        ids = {name: str(f.result().topic_id) for name, f in futures.items()}
        if ids != self._topic_ids:
            self._topic_ids = ids
            self._coords.clear()

    def _coordinates(self, topic: str, partition: int) -> bytes:
        prefix = self._coords.get((topic, partition))
        if prefix is None:
            prefix = ocf.avro_string(self._topic_ids.get(topic, "")) + ocf.zigzag_varint(partition)
            self._coords[(topic, partition)] = prefix
        return prefix

    def _stored_offsets(self, sink_table: SinkTable, topic_id: str) -> dict[int, int]:
        rows = self.client.query(
            f"SELECT _partition, max(_offset) FROM {sink_table.table} WHERE _topic_id = {{tid:String}} GROUP BY _partition",
            parameters={"tid": topic_id},
        ).result_rows
        return {int(p): int(o) for p, o in rows}

    # ---- rebalancing ---------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._refresh_topic_ids()
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=10)}
        stored: dict[tuple[str, int], int] = {}
        for topic, sink_table in self._by_topic.items():
            if any(tp.topic == topic for tp in partitions):
                for p, offset in self._stored_offsets(sink_table, self._topic_ids[topic]).items():
                    stored[(topic, p)] = offset
        for tp in partitions:
            key = (tp.topic, tp.partition)
            start = max(committed.get(key, -1), stored.get(key, -1) + 1)
            tp.offset = start if start >= 0 else OFFSET_BEGINNING
            self._stored[key] = stored.get(key, -1)
            self._seen.pop(key, None)
        consumer.assign(partitions)
        self.stats.assigned = len(partitions)
        logger.info(
            "Sink assigned %d partitions; resuming after stored offsets %s",
            len(partitions),
            {f"{t}/{p}": o for (t, p), o in sorted(stored.items())},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._flushing:
            self._abandon = True  # the flush in progress gives up; the next owner re-reads
        elif self._batch.records:
            try:
                self._flush(retry=False)
            except Exception as e:
                logger.warning("Sink: batch given up on revoke (it is re-read by the next owner): %s", e)
        self._batch = _Batch()
        for tp in partitions:
            self._stored.pop((tp.topic, tp.partition), None)
            self._seen.pop((tp.topic, tp.partition), None)
        consumer.unassign()
        self.stats.assigned = 0

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._abandon = self._flushing
        self._batch = _Batch()
        consumer.unassign()
        self.stats.assigned = 0

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, then flush what is batched and close."""
        if not self._columns:
            self.prepare()
        self._producer = Producer(
            self.settings.producer_config(**{"on_delivery": self._on_dlq_delivery, "message.timeout.ms": 0})
        )
        consumer = Consumer(
            self.settings.consumer_config(
                self.config.group_id,
                **{"session.timeout.ms": self.config.session_timeout_ms, "heartbeat.interval.ms": max(self.config.session_timeout_ms // 6, 300)},
            )
        )
        self._consumer = consumer
        consumer.subscribe(
            list(self._by_topic), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        try:
            while not stop.is_set():
                messages = consumer.consume(num_messages=5_000, timeout=0.05)
                for message in messages:
                    self._add(message)
                if self._due():
                    self._flush(retry=True, stop=stop)
            if self._batch.records:
                self._flush(retry=True, stop=stop, max_attempts=5)
        finally:
            consumer.close()
            self._producer.flush(10)
            self._consumer = None

    def _due(self) -> bool:
        batch = self._batch
        if not batch.records:
            return False
        return (
            batch.records >= self.config.batch_max_rows
            or batch.bytes >= self.config.batch_max_bytes
            or time.monotonic() - batch.started >= self.config.batch_max_seconds
        )

    def _add(self, message: Any) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return
            if error.code() == KafkaError._AUTO_OFFSET_RESET:
                logger.warning("Sink: offset reset on %s [%s]: %s", message.topic(), message.partition(), error)
                self._refresh_topic_ids()
                return
            self.stats.last_error = error.str()
            logger.warning("Sink: consumer error: %s", error)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        key = (topic, partition)
        seen = self._seen.get(key, -1)
        if offset <= seen:
            # The log went back: a re-created topic (new topic id) or an offset reset.
            logger.warning("Sink: %s [%d] went back from offset %d to %d", topic, partition, seen, offset)
            self._refresh_topic_ids()
            self._stored[key] = -1
            stored = self._stored_offsets(self._by_topic[topic], self._topic_ids.get(topic, ""))
            self._stored[key] = stored.get(partition, -1)
        self._seen[key] = offset
        batch = self._batch
        if not batch.records:
            batch.started = time.monotonic()
        batch.records += 1
        batch.last_offsets[key] = offset
        self.stats.records += 1
        if offset <= self._stored.get(key, -1):
            self.stats.already_stored_skipped += 1
            return
        sink_table = self._by_topic[topic]
        value = message.value()
        batch.bytes += len(value) if value else 0
        table_batch = batch.table(sink_table)
        if sink_table.topic is DEAD_LETTER:
            table_batch.rows.append(self._dead_letter_row(message, topic, partition, offset))
            table_batch.row_offsets.append((partition, offset))
            return
        try:
            framing = read_framing(value)
            writer = self._deserializer.writer_schema(framing)
            expected = self._record_names[sink_table.table]
            if writer.name != expected:
                raise MalformedRecordError(f"a {writer.name} record on {topic}, which carries {expected}")
        except MalformedRecordError as e:
            batch.dead_letters.append((message, str(e), type(e).__name__))
            return
        event_id, replay = None, False
        headers = message.headers()
        if headers:
            for name, header_value in headers:
                if name == HEADER_EVENT_ID:
                    event_id = header_value
                elif name == HEADER_REPLAY:
                    replay = True
        coordinates = self._coordinates(topic, partition) + ocf.zigzag_varint(offset)
        group = table_batch.groups.get(writer)
        if group is None:
            group = table_batch.groups[writer] = []
        group.append(_Entry(partition, offset, coordinates, value, message.key(), framing.header_len, event_id, replay))

    # ---- flushing -------------------------------------------------------------------------------------
    def _flush(self, retry: bool, stop: threading.Event | None = None, max_attempts: int | None = None) -> None:
        batch, self._batch = self._batch, _Batch()
        started = time.monotonic()
        self._flushing, self._abandon = True, False
        try:
            if batch.dead_letters:
                self._send_dead_letters(batch.dead_letters)
            for table_batch in batch.tables.values():
                self._insert_table(table_batch, retry, stop, max_attempts)
            self._await_dead_letters()
        except _Abandoned:
            logger.warning("Sink: batch of %d records abandoned after a rebalance", batch.records)
            return
        finally:
            self._flushing = False
        for (topic, partition), offset in batch.last_offsets.items():
            if self._stored.get((topic, partition), -1) < offset:
                self._stored[(topic, partition)] = offset
        if self._consumer is not None and batch.last_offsets:
            offsets = [TopicPartition(t, p, o + 1) for (t, p), o in batch.last_offsets.items()]
            try:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            except Exception as e:  # ClickHouse already has the rows; the stored offsets are the truth
                logger.debug("Sink: offset commit failed: %s", e)
        self.stats.flushes += 1
        self.stats.last_flush_seconds = time.monotonic() - started
        if self.on_flush is not None:
            self.on_flush(self.stats)

    def _insert_table(
        self, table_batch: _TableBatch, retry: bool, stop: threading.Event | None, max_attempts: int | None
    ) -> None:
        sink_table = table_batch.sink_table
        if table_batch.rows:
            self._with_retry(lambda: self._insert_rows(table_batch), sink_table.table, retry, stop, max_attempts)
            self.stats.rows[sink_table.table] += len(table_batch.rows)
            return
        if not table_batch.groups:
            return
        writer, entries = self._unify(table_batch)
        if sink_table.id_column and any(e.replay for e in entries):
            entries = self._drop_stored_replays(sink_table, entries)

        def attempt() -> None:
            nonlocal entries
            if not entries:
                return
            try:
                self._insert_avro(sink_table.table, writer, entries)
            except _Rejected as rejected:
                remaining = self._isolate_rejected(sink_table, writer, entries)
                if len(remaining) == len(entries):
                    raise rejected.error  # nothing at fault in the data: back off and retry
                entries = remaining
                if entries:
                    self._insert_avro(sink_table.table, writer, entries)

        self._with_retry(attempt, sink_table.table, retry, stop, max_attempts)
        self.stats.rows[sink_table.table] += len(entries)

    def _unify(self, table_batch: _TableBatch) -> tuple[AvroSchema, list[_Entry]]:
        """One writer schema per insert: re-encode records of minority writer schemas (rolling upgrades)."""
        groups = table_batch.groups
        writer = max(groups, key=lambda schema: len(groups[schema]))
        if len(groups) == 1:
            return writer, groups[writer]
        entries = list(groups[writer])
        for other, other_entries in groups.items():
            if other is writer:
                continue
            for entry in other_entries:
                try:
                    datum = decode_body(other, entry.value, entry.header_len, reader=writer)
                except MalformedRecordError as e:
                    self._dead_letter_entry(table_batch.sink_table, entry, f"cannot be read as {writer.name}: {e}")
                    continue
                value = SOE_MAGIC + writer.fingerprint + encode_body(writer, datum)
                entries.append(
                    _Entry(
                        entry.partition, entry.offset, entry.coordinates, value, entry.key, SOE_HEADER_LEN,
                        entry.event_id, entry.replay,
                    )  # fmt: skip
                )
        entries.sort(key=lambda e: (e.partition, e.offset))
        return writer, entries

    def _drop_stored_replays(self, sink_table: SinkTable, entries: list[_Entry]) -> list[_Entry]:
        replay_ids = sorted({e.event_id.decode() for e in entries if e.replay and e.event_id})
        stored: set[str] = set()
        for i in range(0, len(replay_ids), 10_000):
            chunk = replay_ids[i : i + 10_000]
            rows = self.client.query(
                f"SELECT {sink_table.id_column} FROM {sink_table.table} WHERE {sink_table.id_column} IN {{ids:Array(String)}}",
                parameters={"ids": chunk},
            ).result_rows
            stored.update(r[0] for r in rows)
        kept, seen = [], set()
        for entry in entries:
            event_id = entry.event_id.decode() if entry.event_id else None
            if event_id is not None and entry.replay and (event_id in stored or event_id in seen):
                self.stats.replay_duplicates_dropped += 1
                continue
            if event_id is not None:
                seen.add(event_id)
            kept.append(entry)
        return kept

    def _insert_avro(self, table: str, writer: AvroSchema, entries: list[_Entry]) -> None:
        schema_json = ocf.wrapper_schema_json(writer.json)
        columns = ocf.insert_columns(writer, self._columns[table])
        ranges: dict[int, list[int]] = {}
        for entry in entries:
            span = ranges.setdefault(entry.partition, [entry.offset, entry.offset])
            span[0], span[1] = min(span[0], entry.offset), max(span[1], entry.offset)
        token = _token(table, self._topic_ids.get(self._topic_by_table[table], ""), ranges, len(entries))
        payload = b"".join(ocf.container(schema_json, len(entries), _chunks(entries)))
        try:
            self.client.raw_insert(
                table,
                columns,
                payload,
                fmt="Avro",
                settings={"insert_deduplication_token": token, "max_insert_block_size": max(len(entries), 1_048_576)},
            )
        except Exception as e:
            if _is_server_rejection(e):
                raise _Rejected(e) from e
            raise

    def _insert_rows(self, table_batch: _TableBatch) -> None:
        columns = [
            "source_topic", "source_partition", "source_offset", "consumer", "error_class", "reason",
            "key", "value", "headers", "failed_at", "_topic_id", "_partition", "_offset",
        ]  # fmt: skip
        ranges: dict[int, list[int]] = {}
        for partition, offset in table_batch.row_offsets:
            span = ranges.setdefault(partition, [offset, offset])
            span[1] = max(span[1], offset)
        token = _token(table_batch.sink_table.table, self._topic_ids.get(self._dlq_topic, ""), ranges, len(table_batch.rows))
        self.client.insert(
            table_batch.sink_table.table,
            table_batch.rows,
            column_names=columns,
            settings={"insert_deduplication_token": token},
        )

    def _with_retry(
        self,
        insert: Callable[[], None],
        table: str,
        retry: bool,
        stop: threading.Event | None,
        max_attempts: int | None,
    ) -> None:
        delay = self.config.retry_initial_seconds
        attempt = 0
        while True:
            try:
                insert()
                return
            except _Abandoned:
                raise
            except Exception as e:
                attempt += 1
                self.stats.retries += 1
                self.stats.last_error = f"{table}: {e}"
                if not retry or (max_attempts is not None and attempt >= max_attempts):
                    raise
                logger.warning("Sink: insert into %s failed (attempt %d, retrying in %.1fs): %s", table, attempt, delay, e)
                self._wait(delay, stop)
                delay = min(delay * 2, self.config.retry_max_seconds)

    def _wait(self, delay: float, stop: threading.Event | None) -> None:
        """Back off while keeping the consumer in its group; give up if partitions are revoked."""
        consumer = self._consumer
        deadline = time.monotonic() + delay
        if consumer is not None:
            assignment = consumer.assignment()
            consumer.pause(assignment)
            try:
                while time.monotonic() < deadline:
                    for message in consumer.consume(num_messages=100, timeout=min(0.2, delay)):
                        pass  # paused: nothing is delivered; this keeps the group session alive
                    if self._abandon:
                        raise _Abandoned()
            finally:
                if not self._abandon:
                    consumer.resume(consumer.assignment())
        elif stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)

    # ---- rejected batches ---------------------------------------------------------------------------
    def _isolate_rejected(self, sink_table: SinkTable, writer: AvroSchema, entries: list[_Entry]) -> list[_Entry]:
        """Dead-letter the records at fault for a rejected insert and return the rest (all of
        ``entries`` when none is at fault).

        First every body is decoded exactly in Python: a record that is truncated or has trailing
        bytes is caught here (alone in a block, ClickHouse would accept a record with trailing
        bytes). What remains is bisected against the Null-engine twin of the table.
        """
        kept: list[_Entry] = []
        for entry in entries:
            try:
                decode_body(writer, entry.value, entry.header_len)
            except MalformedRecordError as e:
                self._dead_letter_entry(sink_table, entry, str(e))
            else:
                kept.append(entry)
        probe = f"{sink_table.table}__probe"
        columns = ocf.insert_columns(writer, self._columns[sink_table.table])
        schema_json = ocf.wrapper_schema_json(writer.json)
        rejected: list[tuple[_Entry, str]] = []

        def refusal(part: list[_Entry]) -> str | None:
            try:
                payload = b"".join(ocf.container(schema_json, len(part), _chunks(part)))
                self.client.raw_insert(probe, columns, payload, fmt="Avro")
                return None
            except Exception as e:
                if not _is_server_rejection(e):
                    raise
                return _first_line(e)

        def bisect(part: list[_Entry], reason: str) -> None:
            if len(part) == 1:
                rejected.append((part[0], reason))
                return
            middle = len(part) // 2
            for half in (part[:middle], part[middle:]):
                half_reason = refusal(half)
                if half_reason is not None:
                    bisect(half, half_reason)

        reason = refusal(kept) if kept else None
        if reason is not None:
            bisect(kept, reason)
        bad = {id(entry) for entry, _ in rejected}
        for entry, why in rejected:
            self._dead_letter_entry(sink_table, entry, f"ClickHouse rejected it: {why}")
        return [e for e in kept if id(e) not in bad]

    # ---- dead letters -------------------------------------------------------------------------------
    def _send_dead_letters(self, dead_letters: list[tuple[Any, str, str]]) -> None:
        assert self._producer is not None
        for message, reason, error_class in dead_letters:
            headers = list(message.headers() or ()) + [
                (HEADER_DLQ_REASON, reason.encode()),
                (HEADER_DLQ_ERROR_CLASS, error_class.encode()),
                (HEADER_DLQ_SOURCE, f"{message.topic()}/{message.partition()}/{message.offset()}".encode()),
                (HEADER_DLQ_CONSUMER, self.config.group_id.encode()),
            ]
            self._producer.produce(self._dlq_topic, message.value(), message.key(), headers=headers)
            self.stats.dead_lettered += 1
            logger.warning(
                "Data error: %s [%d] @%d to the dead-letter topic: %s",
                message.topic(), message.partition(), message.offset(), reason,
            )  # fmt: skip
        self._producer.poll(0)

    def _dead_letter_entry(self, sink_table: SinkTable, entry: _Entry, reason: str) -> None:
        assert self._producer is not None
        topic = self.settings.topic(sink_table.topic.name)
        value = entry.value
        headers = [
            (HEADER_DLQ_REASON, reason.encode()),
            (HEADER_DLQ_ERROR_CLASS, b"ClickHouseRejected"),
            (HEADER_DLQ_SOURCE, f"{topic}/{entry.partition}/{entry.offset}".encode()),
            (HEADER_DLQ_CONSUMER, self.config.group_id.encode()),
        ]
        if entry.event_id:
            headers.append((HEADER_EVENT_ID, entry.event_id))
        self._producer.produce(self._dlq_topic, value, entry.key, headers=headers)
        self.stats.dead_lettered += 1
        logger.warning("Data error: %s/%d@%d to the dead-letter topic: %s", topic, entry.partition, entry.offset, reason)

    def _await_dead_letters(self) -> None:
        """Dead letters must be durable before the offsets of their sources are committed."""
        assert self._producer is not None
        waited = 0.0
        while self._producer.flush(1.0) > 0:
            waited += 1.0
            if waited % 10 == 0:
                logger.warning("Sink: waiting %.0fs for the dead-letter topic to take records", waited)
            if self._abandon:
                raise _Abandoned()

    def _on_dlq_delivery(self, err: KafkaError | None, message: Any) -> None:
        if err is not None:  # only permanent errors reach here (delivery retries forever)
            logger.error("Sink: a dead letter could not be written (%s); its source was: %s", err, message.headers())

    def _dead_letter_row(self, message: Any, topic: str, partition: int, offset: int) -> tuple[Any, ...]:
        headers = {name: (value or b"").decode("utf-8", "replace") for name, value in (message.headers() or ())}
        source = headers.get(HEADER_DLQ_SOURCE, "")
        source_topic, _, rest = source.partition("/")
        source_partition, _, source_offset = rest.partition("/")
        key = message.key()
        timestamp_type, timestamp_ms = message.timestamp()
        return (
            source_topic,
            int(source_partition) if source_partition.lstrip("-").isdigit() else -1,
            int(source_offset) if source_offset.lstrip("-").isdigit() else -1,
            headers.get(HEADER_DLQ_CONSUMER, ""),
            headers.get(HEADER_DLQ_ERROR_CLASS, ""),
            headers.get(HEADER_DLQ_REASON, ""),
            key.decode("utf-8", "replace") if key is not None else None,
            message.value() or b"",
            headers,
            datetime.fromtimestamp((timestamp_ms if timestamp_ms > 0 else time.time() * 1000) / 1000, timezone.utc),
            self._topic_ids.get(topic, ""),
            partition,
            offset,
        )


class _Rejected(Exception):
    """ClickHouse refused the data of an insert (as opposed to being unreachable)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _token(table: str, topic_id: str, ranges: dict[int, list[int]], count: int) -> str:
    text = f"{table}|{topic_id}|{count}|" + ",".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(ranges.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _is_server_rejection(error: Exception) -> bool:
    """ClickHouse answered with an error about the query or data (not a connection failure)."""
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    return isinstance(error, DatabaseError) and not isinstance(error, OperationalError)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:500] if text else type(error).__name__
