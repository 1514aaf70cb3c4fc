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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
from agentstream.schemas.serde import (
    CONFLUENT_HEADER_LEN,
    CONFLUENT_MAGIC,
    SOE_HEADER_LEN,
    IncompatibleSchemaError,
    resolution_problem,
)
from agentstream.settings import Settings
from agentstream.topics.catalogue import DEAD_LETTER, HEADER_EVENT_ID, HEADER_REPLAY, SCHEMAS
from agentstream.topics.schema_resolver import SchemaTopicResolver

from . import ocf
from .batch import SINK_TABLES, Batch, Entry, SinkTable
from .lag import LagWatch, Observation, resume
from .migrations import migrate
from .writer import Abandoned, BatchWriter, SinkStats, dead_letter_row

logger = logging.getLogger(__name__)

__all__ = ["SINK_TABLES", "ClickHouseSink", "SinkStats", "SinkTable"]


class _Lane:
    """The batch of a fixed share of the partitions, inserted in order by its own thread.

    A partition always maps to the same lane, so its records reach ClickHouse in offset order
    (resuming after the stored offsets relies on it) while lanes insert in parallel.
    """

    def __init__(self, index: int, writer: BatchWriter) -> None:
        self.index = index
        self.writer = writer
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"agentstream-sink-insert-{index}")
        self.batch = Batch()
        self.inflight: tuple[Future[None], Batch] | None = None
        self.paused = False


class _Partition:
    """What the sink tracks per assigned partition (one lookup per record on the hot path)."""

    __slots__ = ("sink_table", "coordinates", "seen", "stored", "lane", "gap_round", "gap_since")

    def __init__(
        self, sink_table: SinkTable, coordinates: bytes, stored: int, lane: _Lane, seen: int | None
    ) -> None:
        self.sink_table = sink_table
        self.coordinates = coordinates  # encoded _topic_id and _partition
        self.seen = seen  # highest offset consumed; None until the first record when unknown
        self.stored = stored  # highest offset known to be in ClickHouse
        self.lane = lane
        self.gap_round = 0  # consume() round of the last seek back over a gap; 0 = no gap open
        self.gap_since = 0.0


class ClickHouseSink:
    """Consume the event topics into ClickHouse tables, exactly once.

    Args:
        settings: resolved settings (Kafka bootstrap servers set).
        client: a clickhouse-connect client (chDB or server); migrations are applied on start.
        connect: opens another client for each further insert lane (a client serialises its
            calls); without it there is one lane.
        tables: topic -> table mapping; default :data:`~.batch.SINK_TABLES`.
    """

    def __init__(
        self,
        settings: Settings,
        client: Any,
        connect: Callable[[], Any] | None = None,
        tables: tuple[SinkTable, ...] = SINK_TABLES,
    ) -> None:
        self.settings = settings
        self.client = client
        self._connect = connect
        self.config = settings.sink
        self.tables = tables
        self._by_topic = {settings.topic(t.topic.name): t for t in tables}
        self._record_names = {t.table: t.record_name for t in tables}
        resolver = SchemaTopicResolver(settings.consumer_config("unused"), settings.topic(SCHEMAS.name))
        self._deserializer = AvroDeserializer(
            store=SchemaStore.shipped(resolver), registry=settings.schema_registry_url
        )
        self._columns: dict[str, set[str]] = {}
        self._writers: dict[tuple[str, bytes], AvroSchema] = {}
        self._topic_ids: dict[str, str] = {}
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._lanes: list[_Lane] = []
        self._consumer: Consumer | None = None
        self._round = 0  # consume() calls so far
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
            self._columns[sink_table.table] = {
                name for name, kind in rows if kind not in ("MATERIALIZED", "ALIAS")
            }
            self.client.command(
                f"CREATE TABLE IF NOT EXISTS {sink_table.table}__probe AS {sink_table.table} ENGINE = Null"
            )

    def _refresh_topic_ids(self) -> None:
        admin = AdminClient(self.settings.admin_config())
        futures = admin.describe_topics(TopicCollection(list(self._by_topic)), request_timeout=10)
        ids = {name: str(f.result().topic_id) for name, f in futures.items()}
        if ids != self._topic_ids:
            self._topic_ids = ids
            for (topic, partition), state in self._partitions.items():
                state.coordinates = self._coordinates(topic, partition)

    def _coordinates(self, topic: str, partition: int) -> bytes:
        return ocf.avro_string(self._topic_ids.get(topic, "")) + ocf.zigzag_varint(partition)

    def _track(self, topic: str, partition: int, stored: int, start: int | None = None) -> _Partition:
        lane = self._lanes[partition % len(self._lanes)]
        seen = start - 1 if start is not None and start >= 0 else None
        state = _Partition(self._by_topic[topic], self._coordinates(topic, partition), stored, lane, seen)
        self._partitions[(topic, partition)] = state
        return state

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
            self._track(tp.topic, tp.partition, stored.get(key, -1), start)
        consumer.assign(partitions)
        self.stats.assigned = len(partitions)
        logger.info(
            "Sink assigned %d partitions; resuming after stored offsets %s",
            len(partitions),
            {f"{t}/{p}": o for (t, p), o in sorted(stored.items())},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # An insert that lands after the next owner read the stored offsets would be duplicated
        # by it: finish (or give up) the inserts in flight before letting the partitions go.
        for lane in self._lanes:
            self._drain(lane, abandon=True)
            lane.batch = Batch()  # not inserted, not committed: the next owner reads it again
            lane.paused = False
        # librdkafka keeps a partition the application paused paused through unassign() and a later
        # assign() (a rebalance clears only its own pause): resume them while they are assigned, or
        # those assigned to this sink again are never fetched (issue 13: a lane's partitions stalled).
        resume(consumer, {(tp.topic, tp.partition) for tp in partitions} | self._partitions.keys())
        for tp in partitions:
            self._partitions.pop((tp.topic, tp.partition), None)
        consumer.unassign()
        self.stats.assigned = 0

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_revoke(consumer, partitions)

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, then insert what is batched and close."""
        if not self._columns:
            self.prepare()
        producer = Producer(
            self.settings.producer_config(**{"message.timeout.ms": 0})
        )  # dead letters: retry forever
        # Each lane inserts through a client of its own (a client runs one call at a time); the
        # consumer thread keeps ``self.client`` for its own queries.
        clients = (
            [self._connect() for _ in range(self.config.insert_lanes)] if self._connect else [self.client]
        )
        self._lanes = [
            _Lane(
                i,
                BatchWriter(
                    client,
                    producer,
                    self.config,
                    columns=self._columns,
                    topic_of={t.table: topic for topic, t in self._by_topic.items()},
                    topic_ids=lambda: self._topic_ids,
                    dead_letter_topic=self.settings.topic(DEAD_LETTER.name),
                    stats=self.stats,
                    abandon=threading.Event(),  # per lane: a drain abandons only its own lane's insert
                ),
            )
            for i, client in enumerate(clients)
        ]
        timeout_ms = self.config.session_timeout_ms
        consumer = Consumer(
            self.settings.consumer_config(
                self.config.group_id,
                **{"session.timeout.ms": timeout_ms, "heartbeat.interval.ms": max(timeout_ms // 6, 300)},
            )
        )
        self._consumer = consumer
        watch = LagWatch(self.settings.admin_config(), self.config.lag_check_seconds, self.stats)
        consumer.subscribe(
            list(self._by_topic), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        try:
            while not stop.is_set():
                self._round += 1
                for message in consumer.consume(num_messages=5_000, timeout=0.05):
                    self._add(message)
                for lane in self._lanes:
                    self._collect(lane)
                    if self._due(lane.batch):
                        if lane.inflight is None:
                            if lane.paused:
                                consumer.resume(self._lane_partitions(lane))
                                lane.paused = False
                            self._submit(lane)
                        elif not lane.paused:
                            # Back-pressure while the lane's previous insert runs (or retries): stay
                            # in the group by polling, but fetch nothing more for it.
                            consumer.pause(self._lane_partitions(lane))
                            lane.paused = True
                watch.poll(time.monotonic(), self._partitions.keys, self._observe, consumer)
            for lane in self._lanes:
                self._drain(lane, abandon=False, timeout=30)
                if lane.batch.records:
                    lane.writer.write(lane.batch, max_attempts=5)
                    self._commit(lane.batch)
        finally:
            for lane in self._lanes:
                lane.writer.abandon.set()
                lane.executor.shutdown(wait=True)
            for client in clients:
                if client is not self.client:
                    client.close()
            consumer.close()
            producer.flush(10)
            self._consumer = None

    def _lane_partitions(self, lane: _Lane) -> list[TopicPartition]:
        return [TopicPartition(t, p) for (t, p), state in self._partitions.items() if state.lane is lane]

    def _observe(self, topic: str, partition: int, high: int) -> Observation | None:
        """What the lag check needs to know of an assigned partition (None: not assigned)."""
        state = self._partitions.get((topic, partition))
        if state is None:
            return None
        lane = state.lane
        idle = lane.inflight is None and not lane.paused and not lane.batch.records
        return Observation(None if state.seen is None else state.seen + 1, high, idle)

    def _due(self, batch: Batch) -> bool:
        if not batch.records:
            return False
        return (
            batch.records >= self.config.batch_max_rows
            or batch.bytes >= self.config.batch_max_bytes
            or time.monotonic() - batch.started >= self.config.batch_max_seconds
        )

    def _submit(self, lane: _Lane) -> None:
        batch, lane.batch = lane.batch, Batch()
        lane.writer.abandon.clear()
        lane.inflight = (lane.executor.submit(lane.writer.write, batch), batch)

    def _collect(self, lane: _Lane) -> None:
        """Commit the lane's insert if it finished."""
        if lane.inflight is not None and lane.inflight[0].done():
            self._drain(lane, abandon=False)

    def _drain(self, lane: _Lane, abandon: bool, timeout: float | None = None) -> None:
        """Wait for the lane's insert in flight; with ``abandon`` it stops retrying (it is re-read later)."""
        if lane.inflight is None:
            return
        if abandon:
            lane.writer.abandon.set()
        future, batch = lane.inflight
        lane.inflight = None
        try:
            future.result(timeout=timeout)
        except Abandoned:
            logger.warning("Sink: batch of %d records abandoned after a rebalance", batch.records)
            return
        self._commit(batch)

    def _commit(self, batch: Batch) -> None:
        for key, offset in batch.last_offsets.items():
            state = self._partitions.get(key)
            if state is not None and state.stored < offset:
                state.stored = offset
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
                logger.warning(
                    "Sink: offset reset on %s [%s]: %s", message.topic(), message.partition(), error
                )
                self._refresh_topic_ids()
                return
            self.stats.last_error = error.str()
            logger.warning("Sink: consumer error: %s", error)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        key = (topic, partition)
        state = self._partitions.get(key) or self._track(topic, partition, -1)
        seen = state.seen
        if seen is not None and offset != seen + 1:
            if offset > seen + 1:
                if self._gap(state, topic, partition, offset):
                    return  # reading again from seen + 1
            elif state.gap_round:
                return  # a record we already have, re-read after seeking back over a gap
            else:
                # The log went back: a re-created topic (new topic id) or an offset reset.
                logger.warning("Sink: %s [%d] went back to offset %d", topic, partition, offset)
                self._drain(state.lane, abandon=False)
                self._refresh_topic_ids()
                stored = self._stored_offsets(state.sink_table, self._topic_ids.get(topic, ""))
                state.stored = stored.get(partition, -1)
        elif state.gap_round:
            state.gap_round = 0
            logger.info("Sink: %s [%d] gap before offset %d closed on re-reading", topic, partition, offset)
        state.seen = offset
        batch = state.lane.batch
        if not batch.records:
            batch.started = time.monotonic()
        batch.records += 1
        batch.last_offsets[key] = offset
        self.stats.records += 1
        if offset <= state.stored:
            self.stats.already_stored_skipped += 1
            return
        sink_table = state.sink_table
        value = message.value()
        table_batch = batch.table(sink_table)
        if not sink_table.avro:
            table_batch.rows.append(dead_letter_row(message, self._topic_ids.get(topic, "")))
            table_batch.row_offsets.append((partition, offset))
            return
        if not value:
            if value is None and sink_table.topic.cleanup_policy == "compact":
                return  # a tombstone (`agentstream forget`): its rows are deleted, nothing to insert
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
        group = table_batch.groups.get(writer)
        if group is None:
            group = table_batch.groups[writer] = []
        group.append(
            Entry(
                partition,
                offset,
                state.coordinates + ocf.zigzag_varint(offset),
                value,
                message.key(),
                len(header),
                event_id,
                replay,
            )  # fmt: skip
        )

    def _gap(self, state: _Partition, topic: str, partition: int, offset: int) -> bool:
        """A record arrived after a jump over offsets. True: seek back and read again.

        A broker may expose a later record batch before an earlier one of the same partition
        (the embedded broker does, under concurrent producers); reading past the gap would skip the
        earlier batch for good. Real gaps (transaction markers, compaction) stay after re-reading
        for ``gap_verify_seconds``, and are then accepted.
        """
        now = time.monotonic()
        if not state.gap_round:
            state.gap_since = now
        elif state.gap_round == self._round:
            return True  # fetched before our seek: the partition is being read again anyway
        assert state.seen is not None
        if now - state.gap_since < self.config.gap_verify_seconds and self._consumer is not None:
            state.gap_round = self._round
            self._consumer.seek(TopicPartition(topic, partition, state.seen + 1))
            return True
        if self.config.gap_verify_seconds > 0:
            logger.warning(
                "Sink: %s [%d] has no offsets %d..%d after re-reading for %.1fs; going on",
                topic, partition, state.seen + 1, offset - 1, now - state.gap_since,
            )  # fmt: skip
        self.stats.gaps_accepted += 1
        state.gap_round = 0
        return False

    def _writer_for(self, sink_table: SinkTable, topic: str, value: bytes, header: bytes) -> AvroSchema:
        framing = read_framing(value)
        writer = self._deserializer.writer_schema(framing)
        expected = self._record_names[sink_table.table]
        if writer.name != expected:
            raise MalformedRecordError(f"a {writer.name} record on {topic}, which carries {expected}")
        # A writer schema that lacks a field the table's record type requires cannot be inserted
        # (ClickHouse would fill the column with its default): refuse its records, once per schema.
        assert sink_table.topic.value_schema is not None
        problem = resolution_problem(writer, load_schema(sink_table.topic.value_schema))
        if problem is not None:
            raise IncompatibleSchemaError(f"writer schema {writer.fingerprint.hex()} on {topic}: {problem}")
        self._writers[(sink_table.table, header)] = writer
        return writer
