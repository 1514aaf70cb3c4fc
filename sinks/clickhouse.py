"""The ClickHouse sink: event topics in, one table per topic, every record exactly once.

How a record travels:

1. ``consume()`` hands over raw Kafka records; the sink reads only their framing header to find
   the writer schema (undecodable or foreign records go to the dead-letter topic with the reason).
2. Records are batched per table until the batch is big or old enough (``SinkSettings``).
3. Each table's batch becomes one ``INSERT ... FORMAT Avro``: ClickHouse decodes the Avro
   itself. The insert carries a deduplication token built from its offset ranges, and every row
   carries its Kafka coordinates. Inserting happens on a second thread, while the next batch fills.
4. Only then are offsets committed. Errors retry with backoff and never skip data (see
   :mod:`.writer`).

Exactly once without transactions: after any restart or rebalance the sink resumes each
partition after the highest offset already stored in ClickHouse (read from a projection that is
written atomically with the rows), so a batch that was inserted but not committed is not inserted
again. Records re-sent by producers after an outage carry the ``agentstream-replay`` header and
are dropped when their id is already stored.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from agentstream.schemas import AvroDeserializer, AvroSchema, MalformedRecordError, SchemaStore, read_framing
from agentstream.schemas.catalog import SchemaTopicResolver
from agentstream.schemas.serde import CONFLUENT_HEADER_LEN, CONFLUENT_MAGIC, SOE_HEADER_LEN
from agentstream.schemas.topics import DEAD_LETTER, HEADER_EVENT_ID, HEADER_REPLAY, SCHEMAS
from agentstream.settings import Settings

from . import ocf
from .batch import SINK_TABLES, Batch, Entry, SinkTable
from .migrations import migrate
from .writer import Abandoned, BatchWriter, SinkStats, dead_letter_row

logger = logging.getLogger(__name__)

__all__ = ["SINK_TABLES", "ClickHouseSink", "SinkStats", "SinkTable"]


class ClickHouseSink:
    """Consume the event topics into ClickHouse tables, exactly once.

    Args:
        settings: resolved settings (Kafka bootstrap servers set).
        client: a clickhouse-connect client (chDB or server); migrations are applied on start.
        tables: topic -> table mapping; default :data:`~.batch.SINK_TABLES`.
    """

    def __init__(self, settings: Settings, client: Any, tables: tuple[SinkTable, ...] = SINK_TABLES) -> None:
        self.settings = settings
        self.client = client
        self.config = settings.sink
        self.tables = tables
        self._by_topic = {settings.topic(t.topic.name): t for t in tables}
        self._record_names = {t.table: t.record_name for t in tables}
        resolver = SchemaTopicResolver(settings.consumer_config("unused"), settings.topic(SCHEMAS.name))
        self._deserializer = AvroDeserializer(store=SchemaStore.shipped(resolver), registry=settings.schema_registry_url)
        self._columns: dict[str, set[str]] = {}
        self._writers: dict[tuple[str, bytes], AvroSchema] = {}
        self._topic_ids: dict[str, str] = {}
        self._coords: dict[tuple[str, int], bytes] = {}
        self._stored: dict[tuple[str, int], int] = {}  # highest offset known to be in ClickHouse
        self._seen: dict[tuple[str, int], int] = {}  # highest offset consumed
        self._batch = Batch()
        self._inflight: tuple[Future[None], Batch] | None = None
        self._consumer: Consumer | None = None
        self.stats = SinkStats()

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
            self.client.command(f"CREATE TABLE IF NOT EXISTS {sink_table.table}__probe AS {sink_table.table} ENGINE = Null")

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
        # An insert that lands after the next owner read the stored offsets would be duplicated
        # by it: finish (or give up) the insert in flight before letting the partitions go.
        self._drain(abandon=True)
        self._batch = Batch()  # not inserted, not committed: the next owner reads it again
        for tp in partitions:
            self._stored.pop((tp.topic, tp.partition), None)
            self._seen.pop((tp.topic, tp.partition), None)
        consumer.unassign()
        self.stats.assigned = 0

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_revoke(consumer, partitions)

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, then insert what is batched and close."""
        if not self._columns:
            self.prepare()
        producer = Producer(self.settings.producer_config(**{"message.timeout.ms": 0}))  # dead letters: retry forever
        self._writer = BatchWriter(
            self.client,
            producer,
            self.config,
            columns=self._columns,
            topic_of={t.table: topic for topic, t in self._by_topic.items()},
            topic_ids=lambda: self._topic_ids,
            dead_letter_topic=self.settings.topic(DEAD_LETTER.name),
            stats=self.stats,
        )
        timeout_ms = self.config.session_timeout_ms
        consumer = Consumer(
            self.settings.consumer_config(
                self.config.group_id,
                **{"session.timeout.ms": timeout_ms, "heartbeat.interval.ms": max(timeout_ms // 6, 300)},
            )
        )
        self._consumer = consumer
        executor = ThreadPoolExecutor(1, thread_name_prefix="agentstream-sink-insert")
        self._executor = executor
        consumer.subscribe(list(self._by_topic), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        paused = False
        try:
            while not stop.is_set():
                for message in consumer.consume(num_messages=5_000, timeout=0.05):
                    self._add(message)
                self._collect()
                if self._due():
                    if self._inflight is None:
                        if paused:
                            consumer.resume(consumer.assignment())
                            paused = False
                        self._submit()
                    elif not paused:
                        # Back-pressure while the previous insert runs (or retries): stay in the
                        # group by polling, but fetch nothing more.
                        consumer.pause(consumer.assignment())
                        paused = True
            self._drain(abandon=False, timeout=30)
            if self._batch.records:
                self._writer.write(self._batch, max_attempts=5)
                self._commit(self._batch)
        finally:
            self._writer.abandon.set()
            executor.shutdown(wait=True)
            consumer.close()
            producer.flush(10)
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

    def _submit(self) -> None:
        batch, self._batch = self._batch, Batch()
        self._writer.abandon.clear()
        self._inflight = (self._executor.submit(self._writer.write, batch), batch)

    def _collect(self) -> None:
        """Commit the insert that finished, if any."""
        if self._inflight is None or not self._inflight[0].done():
            return
        future, batch = self._inflight
        self._inflight = None
        try:
            future.result()
        except Abandoned:
            logger.warning("Sink: batch of %d records abandoned after a rebalance", batch.records)
            return
        self._commit(batch)

    def _drain(self, abandon: bool, timeout: float | None = None) -> None:
        """Wait for the insert in flight; with ``abandon`` it stops retrying (it is re-read later)."""
        if self._inflight is None:
            return
        if abandon:
            self._writer.abandon.set()
        future, batch = self._inflight
        self._inflight = None
        try:
            future.result(timeout=timeout)
        except Abandoned:
            logger.warning("Sink: batch of %d records abandoned after a rebalance", batch.records)
            return
        self._commit(batch)

    def _commit(self, batch: Batch) -> None:
        for key, offset in batch.last_offsets.items():
            if self._stored.get(key, -1) < offset:
                self._stored[key] = offset
        if self._consumer is not None and batch.last_offsets:
            offsets = [TopicPartition(t, p, o + 1) for (t, p), o in batch.last_offsets.items()]
            try:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            except Exception as e:  # ClickHouse already has the rows; the stored offsets are the truth
                logger.debug("Sink: offset commit failed: %s", e)

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
        if offset <= self._seen.get(key, -1):
            # The log went back: a re-created topic (new topic id) or an offset reset.
            logger.warning("Sink: %s [%d] went back to offset %d", topic, partition, offset)
            self._drain(abandon=False)
            self._refresh_topic_ids()
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
        table_batch = batch.table(sink_table)
        if not sink_table.avro:
            table_batch.rows.append(dead_letter_row(message, self._topic_ids.get(topic, "")))
            table_batch.row_offsets.append((partition, offset))
            return
        if not value:
            batch.dead_letters.append((message, "empty record", MalformedRecordError.__name__))
            return
        batch.bytes += len(value)
        # The framing header names the writer schema: one dict lookup per record on the hot path.
        header = value[:SOE_HEADER_LEN] if value[0] != CONFLUENT_MAGIC else value[:CONFLUENT_HEADER_LEN]
        writer = self._writers.get((sink_table.table, header))
        if writer is None:
            try:
                writer = self._writer_for(sink_table, topic, value, header)
            except MalformedRecordError as e:
                batch.dead_letters.append((message, str(e), type(e).__name__))
                return
        event_id, replay = None, False
        for name, header_value in message.headers() or ():
            if name == HEADER_EVENT_ID:
                event_id = header_value
            elif name == HEADER_REPLAY:
                replay = True
        prefix = self._coords.get(key) or self._coordinates(topic, partition)
        coordinates = prefix + ocf.zigzag_varint(offset)
        group = table_batch.groups.get(writer)
        if group is None:
            group = table_batch.groups[writer] = []
        group.append(Entry(partition, offset, coordinates, value, message.key(), len(header), event_id, replay))

    def _writer_for(self, sink_table: SinkTable, topic: str, value: bytes, header: bytes) -> AvroSchema:
        framing = read_framing(value)
        writer = self._deserializer.writer_schema(framing)
        expected = self._record_names[sink_table.table]
        if writer.name != expected:
            raise MalformedRecordError(f"a {writer.name} record on {topic}, which carries {expected}")
        self._writers[(sink_table.table, header)] = writer
        return writer
