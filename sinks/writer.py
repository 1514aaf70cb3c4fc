"""Writing one batch into ClickHouse: atomic per table, retried, and never skipping data.

Runs on the sink's insert thread while the consumer thread fills the next batch.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError

from agentstream.schemas import AvroSchema, MalformedRecordError, SerializationError, load_schema
from agentstream.schemas.serde import SOE_HEADER_LEN, SOE_MAGIC, decode_body, encode_body, resolution_problem
from agentstream.settings import SinkSettings
from agentstream.topics import dead_letter
from agentstream.topics.catalogue import (
    HEADER_DLQ_CONSUMER,
    HEADER_DLQ_ERROR_CLASS,
    HEADER_DLQ_REASON,
    HEADER_DLQ_SOURCE,
    HEADER_EVENT_ID,
)

from . import ocf
from .batch import Batch, Entry, SinkTable, TableBatch, chunks

logger = logging.getLogger(__name__)

DEAD_LETTER_COLUMNS = [
    "source_topic", "source_partition", "source_offset", "consumer", "error_class", "reason",
    "key", "value", "headers", "failed_at", "_topic_id", "_partition", "_offset",
]  # fmt: skip


class Abandoned(Exception):
    """The batch was given up because its partitions were revoked; the next owner re-reads it."""


@dataclass
class SinkStats:
    """Counters for the status endpoint; insert lanes update them under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    records: int = 0
    rows: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    replay_duplicates_dropped: int = 0
    already_stored_skipped: int = 0
    gaps_accepted: int = 0
    flushes: int = 0
    retries: int = 0
    last_flush_seconds: float = 0.0
    last_error: str = ""
    assigned: int = 0
    #: partitions stalled now, and stalls seen in total (see :mod:`.lag`)
    stalled_partitions: int = 0
    stalls_detected: int = 0
    #: "topic/partition" -> records waiting in Kafka, at the last lag check
    lag: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return self._as_dict()

    def _as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "rows": dict(self.rows),
            "dead_lettered": self.dead_lettered,
            "replay_duplicates_dropped": self.replay_duplicates_dropped,
            "already_stored_skipped": self.already_stored_skipped,
            "gaps_accepted": self.gaps_accepted,
            "flushes": self.flushes,
            "retries": self.retries,
            "last_flush_seconds": round(self.last_flush_seconds, 4),
            "last_error": self.last_error,
            "assigned_partitions": self.assigned,
            "stalled_partitions": self.stalled_partitions,
            "stalls_detected": self.stalls_detected,
            "lag": dict(self.lag),
        }


class _Rejected(Exception):
    """ClickHouse refused the data of an insert (as opposed to being unreachable)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class BatchWriter:
    """Inserts batches: one atomic ``INSERT ... FORMAT Avro`` per table, with a deduplication token.

    Errors retry with exponential backoff until ``abandon`` or ``stop`` is set. A batch ClickHouse
    rejects has its faulty records dead-lettered (see :meth:`_isolate_rejected`); the rest is
    inserted.
    """

    def __init__(
        self,
        client: Any,
        dead_letters: Any,
        config: SinkSettings,
        *,
        columns: dict[str, set[str]],
        topic_of: dict[str, str],
        topic_ids: Callable[[], dict[str, str]],
        dead_letter_topic: str,
        stats: SinkStats,
        abandon: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.producer = dead_letters  # a confluent_kafka.Producer for the dead-letter topic
        self.config = config
        self.columns = columns
        self.topic_of = topic_of
        self.topic_ids = topic_ids
        self.dead_letter_topic = dead_letter_topic
        self.stats = stats
        self.abandon = abandon or threading.Event()
        #: dead letters above this size are sent as references (see topics/dead_letter.py)
        self.dead_letter_limit = dead_letter.record_limit({})
        self._resolutions: dict[tuple[bytes, bytes], str | None] = {}

    # ---- one batch -------------------------------------------------------------------------------------
    def write(self, batch: Batch, max_attempts: int | None = None) -> None:
        """Insert every table of ``batch``; dead letters are durable before this returns."""
        started = time.monotonic()
        for message, reason, error_class in batch.dead_letters:
            self._dead_letter_message(message, reason, error_class)
        for table_batch in batch.tables.values():
            self._write_table(table_batch, max_attempts)
        self._await_dead_letters()
        with self.stats.lock:
            self.stats.flushes += 1
            self.stats.last_flush_seconds = time.monotonic() - started

    def _write_table(self, table_batch: TableBatch, max_attempts: int | None) -> None:
        sink_table = table_batch.sink_table
        if table_batch.rows:
            self._with_retry(lambda: self._insert_rows(table_batch), sink_table.table, max_attempts)
            with self.stats.lock:
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
                    raise rejected.error from None  # nothing at fault in the data: back off and retry
                entries = remaining
                if entries:
                    self._insert_avro(sink_table.table, writer, entries)

        self._with_retry(attempt, sink_table.table, max_attempts)
        with self.stats.lock:
            self.stats.rows[sink_table.table] += len(entries)

    def _unify(self, table_batch: TableBatch) -> tuple[AvroSchema, list[Entry]]:
        """One writer schema per insert: re-encode records of minority writer schemas (rolling upgrades).

        The target is the shipped schema of the table's record type when some records have it (no
        field of theirs is lost), else the most common writer schema when every other one resolves
        to it, else the shipped schema: every writer resolves to that one (the sink refuses other
        writer schemas when it first sees them). A record that still cannot be read as the target
        is dead-lettered.
        """
        groups = table_batch.groups
        writer = max(groups, key=lambda schema: len(groups[schema]))
        if len(groups) == 1:
            return writer, groups[writer]
        value_schema = table_batch.sink_table.topic.value_schema
        assert value_schema is not None  # only Avro tables have writer groups
        shipped = load_schema(value_schema)
        if shipped in groups or any(
            self._resolution_problem(other, writer) for other in groups if other is not writer
        ):
            writer = shipped
        entries = list(groups.get(writer, ()))
        for other, other_entries in groups.items():
            if other == writer:
                continue
            for entry in other_entries:
                try:
                    datum = decode_body(other, entry.value, entry.header_len, reader=writer)
                    value = SOE_MAGIC + writer.fingerprint + encode_body(writer, datum)
                except SerializationError as e:
                    self._dead_letter_entry(
                        table_batch.sink_table,
                        entry,
                        f"cannot be read as {writer.name}: {e}",
                        type(e).__name__,
                    )
                    continue
                entries.append(
                    Entry(
                        entry.partition,
                        entry.offset,
                        entry.coordinates,
                        value,
                        entry.key,
                        SOE_HEADER_LEN,
                        entry.event_id,
                        entry.replay,
                    )  # fmt: skip
                )
        entries.sort(key=lambda e: (e.partition, e.offset))
        return writer, entries

    def _resolution_problem(self, writer: AvroSchema, reader: AvroSchema) -> str | None:
        key = (writer.fingerprint, reader.fingerprint)
        if key not in self._resolutions:
            self._resolutions[key] = resolution_problem(writer, reader)
        return self._resolutions[key]

    def _drop_stored_replays(self, sink_table: SinkTable, entries: list[Entry]) -> list[Entry]:
        """Records a producer re-sent after an outage: keep only those not stored already."""
        replay_ids = sorted({e.event_id.decode() for e in entries if e.replay and e.event_id})
        stored: set[str] = set()
        for i in range(0, len(replay_ids), 10_000):
            rows = self.client.query(
                f"SELECT {sink_table.id_column} FROM {sink_table.table} "
                f"WHERE {sink_table.id_column} IN {{ids:Array(String)}}",
                parameters={"ids": replay_ids[i : i + 10_000]},
            ).result_rows
            stored.update(r[0] for r in rows)
        kept, seen = [], set()
        for entry in entries:
            event_id = entry.event_id.decode() if entry.event_id else None
            if event_id is not None and entry.replay and (event_id in stored or event_id in seen):
                with self.stats.lock:
                    self.stats.replay_duplicates_dropped += 1
                continue
            if event_id is not None:
                seen.add(event_id)
            kept.append(entry)
        return kept

    # ---- inserts ------------------------------------------------------------------------------------
    def _insert_avro(self, table: str, writer: AvroSchema, entries: list[Entry]) -> None:
        ranges: dict[int, list[int]] = {}
        for entry in entries:
            span = ranges.setdefault(entry.partition, [entry.offset, entry.offset])
            span[0], span[1] = min(span[0], entry.offset), max(span[1], entry.offset)
        token = _token(table, self.topic_ids().get(self.topic_of[table], ""), ranges, len(entries))
        try:
            self.client.raw_insert(
                table,
                ocf.insert_columns(writer, self.columns[table]),
                ocf.ContainerStream(
                    ocf.container(ocf.wrapper_schema_json(writer.json), len(entries), chunks(entries))
                ),
                fmt="Avro",
                settings={
                    "insert_deduplication_token": token,
                    # one block, so the insert is atomic (resuming after the stored offsets relies on it)
                    "max_insert_block_size": max(len(entries), 1_048_576),
                    # ReplacingMergeTree collapses duplicates in merges; sorting them out at insert
                    # time is wasted work, as the sink inserts each record once.
                    "optimize_on_insert": 0,
                },
            )
        except Exception as e:
            if _is_server_rejection(e):
                raise _Rejected(e) from e
            raise

    def _insert_rows(self, table_batch: TableBatch) -> None:
        table = table_batch.sink_table.table
        ranges: dict[int, list[int]] = {}
        for partition, offset in table_batch.row_offsets:
            span = ranges.setdefault(partition, [offset, offset])
            span[1] = max(span[1], offset)
        token = _token(table, self.topic_ids().get(self.topic_of[table], ""), ranges, len(table_batch.rows))
        self.client.insert(
            table,
            table_batch.rows,
            column_names=DEAD_LETTER_COLUMNS,
            settings={"insert_deduplication_token": token},
        )

    def _with_retry(self, insert: Callable[[], None], table: str, max_attempts: int | None) -> None:
        delay = self.config.retry_initial_seconds
        attempt = 0
        while True:
            if self.abandon.is_set():
                raise Abandoned()
            try:
                insert()
                return
            except Exception as e:
                attempt += 1
                with self.stats.lock:
                    self.stats.retries += 1
                    self.stats.last_error = f"{table}: {_first_line(e)}"
                if max_attempts is not None and attempt >= max_attempts:
                    raise
                logger.warning(
                    "Sink: insert into %s failed (attempt %d, retrying in %.1fs): %s",
                    table,
                    attempt,
                    delay,
                    e,
                )
                if self.abandon.wait(delay):
                    raise Abandoned() from e
                delay = min(delay * 2, self.config.retry_max_seconds)

    # ---- rejected batches ---------------------------------------------------------------------------
    def _isolate_rejected(
        self, sink_table: SinkTable, writer: AvroSchema, entries: list[Entry]
    ) -> list[Entry]:
        """Dead-letter the records at fault for a rejected insert and return the rest (all of
        ``entries`` when none is at fault).

        First every body is decoded exactly in Python: a record that is truncated or has trailing
        bytes is caught here (alone in a block, ClickHouse would accept a record with trailing
        bytes). What remains is bisected against the Null-engine twin of the table.
        """
        kept: list[Entry] = []
        for entry in entries:
            try:
                decode_body(writer, entry.value, entry.header_len)
            except MalformedRecordError as e:
                self._dead_letter_entry(sink_table, entry, str(e))
            else:
                kept.append(entry)
        probe = f"{sink_table.table}__probe"
        columns = ocf.insert_columns(writer, self.columns[sink_table.table])
        schema_json = ocf.wrapper_schema_json(writer.json)
        rejected: list[tuple[Entry, str]] = []

        def refusal(part: list[Entry]) -> str | None:
            try:
                payload = ocf.ContainerStream(ocf.container(schema_json, len(part), chunks(part)))
                self.client.raw_insert(probe, columns, payload, fmt="Avro")
                return None
            except Exception as e:
                if not _is_server_rejection(e):
                    raise
                return _first_line(e)

        def bisect(part: list[Entry], reason: str) -> None:
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
    def _dead_letter_message(self, message: Any, reason: str, error_class: str) -> None:
        source = dead_letter.Source(message.topic(), message.partition(), message.offset())
        self._dead_letter(message.value(), message.key(), message.headers(), reason, error_class, source)

    def _dead_letter_entry(
        self, sink_table: SinkTable, entry: Entry, reason: str, error_class: str = "ClickHouseRejected"
    ) -> None:
        headers = [(HEADER_EVENT_ID, entry.event_id)] if entry.event_id else []
        source = dead_letter.Source(self.topic_of[sink_table.table], entry.partition, entry.offset)
        self._dead_letter(entry.value, entry.key, headers, reason, error_class, source)

    def _dead_letter(
        self,
        value: bytes | None,
        key: bytes | None,
        headers: Any,
        reason: str,
        error_class: str,
        source: dead_letter.Source,
    ) -> None:
        letter = dead_letter.build(
            source=source,
            key=key,
            value=value,
            headers=headers,
            reason=reason,
            error_class=error_class,
            consumer=self.config.group_id,
            limit=self.dead_letter_limit,
        )

        def produce(k: bytes | None, v: bytes | None, h: dead_letter.Headers) -> None:
            self.producer.produce(self.dead_letter_topic, v, k, headers=h, on_delivery=refused)

        def refused(error: Any, _message: Any) -> None:
            # The broker's limit may be below the producer's: its refusal arrives here, in flush().
            if error is not None and not letter.reference and error.code() in _TOO_LARGE:
                ref = dead_letter.reference(letter, source, reason)
                self.producer.produce(self.dead_letter_topic, ref.value, ref.key, headers=ref.headers)

        sent = dead_letter.send(letter, source, produce)
        with self.stats.lock:
            self.stats.dead_lettered += 1
        dead_letter.log(sent, source, reason, "sink")

    def _await_dead_letters(self) -> None:
        """Dead letters must be durable before the offsets of their sources are committed."""
        waited = 0
        while self.producer.flush(1.0) > 0:
            waited += 1
            if waited % 10 == 0:
                logger.warning("Sink: waiting %ds for the dead-letter topic to take records", waited)
            if self.abandon.is_set():
                raise Abandoned()


def dead_letter_row(message: Any, topic_id: str) -> tuple[Any, ...]:
    """A ``dead_letters`` row for a record of the dead-letter topic."""
    headers = {name: (value or b"").decode("utf-8", "replace") for name, value in (message.headers() or ())}
    source_topic, _, rest = headers.get(HEADER_DLQ_SOURCE, "").partition("/")
    source_partition, _, source_offset = rest.partition("/")
    key = message.key()
    _, timestamp_ms = message.timestamp()
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
        datetime.fromtimestamp((timestamp_ms if timestamp_ms > 0 else time.time() * 1000) / 1000, UTC),
        topic_id,
        message.partition(),
        message.offset(),
    )


_TOO_LARGE = (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE)


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
