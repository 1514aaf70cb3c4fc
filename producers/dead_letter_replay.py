"""Re-driving dead letters to their source topics once the consumer or schema that refused them is fixed.

A dead letter is identified by its own coordinates on the dead-letter topic (``partition/offset``;
the topic id tells a re-created topic's records apart). Re-driving one sends the original record to
the partition it came from, with its original key and headers minus the dead-letter headers, plus:

* ``agentstream-dlq-replay-of: <dead-letter topic>/<partition>/<offset>``, so a record that fails
  again is recognisably a repeat (its new dead letter carries the header), and
* ``agentstream-replay: 1``, the header of producer re-sends: the sink drops a record whose id is
  stored already. A record a stream worker refused was often stored by the sink, and a record
  re-driven twice (see below) must not land twice.

A *reference* dead letter (a record too big to copy, see :mod:`agentstream.topics.dead_letter`) is re-driven by
reading the original from its source topic; when retention or compaction removed it, it is skipped
with the reason.

Once per dead letter: every record sent is written to the ClickHouse table ``dead_letter_replays``
(migration 0006) after Kafka acknowledged it, and dead letters found there are not sent again. A
table rather than a compacted topic because the dashboard, which only reads ClickHouse, shows the
same fact, and the command already reads the dead letters from ClickHouse: one place to look, no
new topic for the sink to follow. The gap this leaves (a crash after Kafka took the record and
before the row was written, or two runs at once) can only send a record a second time, and the
``agentstream-replay`` header makes the sink drop that second copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from agentstream.settings import Settings
from agentstream.topics.catalogue import (
    DEAD_LETTER,
    HEADER_DLQ_CONSUMER,
    HEADER_DLQ_ERROR_CLASS,
    HEADER_DLQ_REASON,
    HEADER_DLQ_REFERENCE,
    HEADER_DLQ_REPLAY_OF,
    HEADER_DLQ_SOURCE,
    HEADER_REPLAY,
)

logger = logging.getLogger(__name__)

__all__ = [
    "REPLAYS_TABLE",
    "DeadLetter",
    "Outcome",
    "Redrive",
    "Reference",
    "Replayer",
    "parse_reference",
    "replay_headers",
]

REPLAYS_TABLE = "dead_letter_replays"
REPLAY_COLUMNS = [
    "dead_letter_topic_id", "dead_letter_partition", "dead_letter_offset", "source_topic",
    "source_partition", "source_offset", "replayed_partition", "replayed_offset", "replayed_at",
]  # fmt: skip
#: headers a dead-letter queue adds (and a previous re-drive added): never copied onto a re-drive
DEAD_LETTER_HEADERS = frozenset(
    {
        HEADER_DLQ_REASON,
        HEADER_DLQ_ERROR_CLASS,
        HEADER_DLQ_SOURCE,
        HEADER_DLQ_CONSUMER,
        HEADER_DLQ_REFERENCE,
        HEADER_DLQ_REPLAY_OF,
        HEADER_REPLAY,
    }
)

Status = Literal["sent", "would send", "already replayed", "skipped", "failed"]


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, as the ``dead_letters`` table holds it."""

    topic_id: str  # of the dead-letter topic: a re-created topic starts its offsets again
    partition: int  # this record's coordinates on the dead-letter topic: its identity
    offset: int
    source_topic: str
    source_partition: int
    source_offset: int
    consumer: str
    error_class: str
    reason: str
    key: str | None  # as ClickHouse holds it (text); a re-drive reads the exact bytes from Kafka
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)
    failed_at: datetime | None = None
    replayed_at: datetime | None = None

    @property
    def id(self) -> str:
        """``partition/offset`` on the dead-letter topic (what ``--id`` takes)."""
        return f"{self.partition}/{self.offset}"

    @property
    def source(self) -> str:
        return f"{self.source_topic}/{self.source_partition}/{self.source_offset}"

    @property
    def is_reference(self) -> bool:
        return self.headers.get(HEADER_DLQ_REFERENCE) == "1"


@dataclass(frozen=True)
class Reference:
    """Where the original of a too-big dead letter is: it stays in its source topic."""

    topic: str
    partition: int
    offset: int
    size: int
    sha256: str
    reason: str = ""


@dataclass
class Outcome:
    """What replaying one dead letter did."""

    dead_letter: DeadLetter
    status: Status
    detail: str = ""
    #: ``topic/partition/offset`` the record was sent to ("sent"), or the topic and partition it goes to
    target: str = ""


@dataclass
class Redrive:
    """One dead letter of a replay plan: what is sent for it, and what came of it."""

    dead_letter: DeadLetter
    key: bytes | None
    value: bytes
    headers: list[tuple[str, str | bytes | None]]
    outcome: Outcome


def parse_reference(value: bytes) -> Reference:
    """The reference a too-big dead letter carries as its value.

    Raises:
        ValueError: the value is not a reference (not JSON, or a field is missing or mistyped).
    """
    try:
        data = json.loads(value)
        if not isinstance(data, dict) or data.get("reference") is not True:
            raise ValueError("no 'reference': true")
        return Reference(
            topic=_typed(data, "topic", str),
            partition=_typed(data, "partition", int),
            offset=_typed(data, "offset", int),
            size=_typed(data, "size", int),
            sha256=_typed(data, "sha256", str).lower(),
            reason=str(data.get("reason", "")),
        )
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not a dead-letter reference: {e}") from e


def _typed(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{name!r} is missing or not a {kind.__name__}")
    return value


def replay_headers(
    original: Iterable[tuple[str, bytes | str | None]], replay_of: str
) -> list[tuple[str, str | bytes | None]]:
    """The headers of a re-driven record: the original's, without dead-letter ones, plus where it came from."""
    kept: list[tuple[str, str | bytes | None]] = [
        (name, value.encode() if isinstance(value, str) else (value or b""))
        for name, value in original
        if name not in DEAD_LETTER_HEADERS
    ]
    return kept + [(HEADER_REPLAY, b"1"), (HEADER_DLQ_REPLAY_OF, replay_of.encode())]


class Replayer:
    """Sends dead letters back to their source topics, each at most once (see the module docstring).

    Args:
        settings: resolved settings (Kafka, topic prefix).
        clickhouse: a clickhouse-connect client; with the query gateway, the write role (the
            replays are recorded with an INSERT). A dry run only reads.
        timeout: seconds to wait for one record to be read from Kafka, and for Kafka to take the
            re-driven records.
    """

    def __init__(self, settings: Settings, clickhouse: Any, *, timeout: float = 15.0) -> None:
        self.settings = settings
        self.clickhouse = clickhouse
        self.timeout = timeout
        self.dead_letter_topic = settings.topic(DEAD_LETTER.name)

    def replay(self, dead_letters: Sequence[DeadLetter], *, dry_run: bool = False) -> list[Outcome]:
        """Re-drive ``dead_letters``: :meth:`plan`, then (unless ``dry_run``) :meth:`send`."""
        plan = self.plan(dead_letters)
        return [r.outcome for r in plan] if dry_run else self.send(plan)

    def plan(self, dead_letters: Sequence[DeadLetter]) -> list[Redrive]:
        """What re-driving ``dead_letters`` would send, in dead-letter order; nothing is sent.

        Each outcome is "would send", "already replayed" (nothing is sent for it), or "skipped"
        with the reason (the original cannot be read).
        """
        ordered = sorted(dead_letters, key=lambda d: (d.topic_id, d.partition, d.offset))
        unique = list({(d.topic_id, d.partition, d.offset): d for d in ordered}.values())
        replayed = self.replayed(unique)
        plan: list[Redrive] = []
        to_read: list[DeadLetter] = []
        for dead_letter in unique:
            when = replayed.get((dead_letter.topic_id, dead_letter.partition, dead_letter.offset))
            if when is None:
                to_read.append(dead_letter)
            else:
                outcome = Outcome(
                    dead_letter, "already replayed", f"replayed at {when:%Y-%m-%d %H:%M:%S} UTC"
                )
                plan.append(Redrive(dead_letter, None, b"", [], outcome))
        plan += self._read(to_read)
        return sorted(
            plan, key=lambda r: (r.dead_letter.topic_id, r.dead_letter.partition, r.dead_letter.offset)
        )

    def send(self, plan: Sequence[Redrive]) -> list[Outcome]:
        """Send what ``plan`` would send and record it; the outcomes, in the plan's order.

        What was replayed since the plan was made (another run) is not sent again.
        """
        sendable = [r for r in plan if r.outcome.status == "would send"]
        replayed = self.replayed([r.dead_letter for r in sendable])
        for redrive in sendable:
            d = redrive.dead_letter
            when = replayed.get((d.topic_id, d.partition, d.offset))
            if when is not None:
                redrive.outcome.status = "already replayed"
                redrive.outcome.detail = f"replayed at {when:%Y-%m-%d %H:%M:%S} UTC"
        sendable = [r for r in sendable if r.outcome.status == "would send"]
        if sendable:
            self._send(sendable)
            self._record([r for r in sendable if r.outcome.status == "sent"])
        return [r.outcome for r in plan]

    def replayed(self, dead_letters: Sequence[DeadLetter]) -> dict[tuple[str, int, int], datetime]:
        """When each of ``dead_letters`` was re-driven, for those that were."""
        if not dead_letters:
            return {}
        keys = sorted({f"{d.topic_id}|{d.partition}|{d.offset}" for d in dead_letters})
        found: dict[tuple[str, int, int], datetime] = {}
        for i in range(0, len(keys), 10_000):
            rows = self.clickhouse.query(
                f"""
                SELECT dead_letter_topic_id, dead_letter_partition, dead_letter_offset, min(replayed_at)
                FROM {REPLAYS_TABLE}
                WHERE concat(dead_letter_topic_id, '|', toString(dead_letter_partition), '|',
                             toString(dead_letter_offset)) IN {{keys:Array(String)}}
                GROUP BY dead_letter_topic_id, dead_letter_partition, dead_letter_offset
                """,
                parameters={"keys": keys[i : i + 10_000]},
            ).result_rows
            for topic_id, partition, offset, at in rows:
                found[(str(topic_id), int(partition), int(offset))] = at
        return found

    # ---- reading the originals ------------------------------------------------------------------
    def _read(self, dead_letters: Sequence[DeadLetter]) -> list[Redrive]:
        """What to send for each dead letter: read back from Kafka, exact (the ClickHouse copy
        decoded keys and headers as text), or from ClickHouse when the dead-letter topic has
        dropped it already (retention); a reference's original always from its source topic."""
        if not dead_letters:
            return []
        consumer = Consumer(
            self.settings.consumer_config(
                f"agentstream-dead-letter-replay-{uuid.uuid4().hex[:8]}",
                # an offset the log no longer (or never) had resets to the end: EOF says it is gone
                **{"enable.partition.eof": True, "auto.offset.reset": "latest"},
            )
        )
        try:
            return [self._redrive(consumer, dead_letter) for dead_letter in dead_letters]
        finally:
            consumer.close()

    def _redrive(self, consumer: Consumer, dead_letter: DeadLetter) -> Redrive:
        replay_of = f"{self.dead_letter_topic}/{dead_letter.id}"
        target = f"{dead_letter.source_topic}/{dead_letter.source_partition}"

        def skipped(why: str) -> Redrive:
            return Redrive(dead_letter, None, b"", [], Outcome(dead_letter, "skipped", why))

        if not dead_letter.source_topic or dead_letter.source_partition < 0:
            return skipped("the dead letter names no source topic and partition to send it back to")
        message = read_record(
            consumer, self.dead_letter_topic, dead_letter.partition, dead_letter.offset, self.timeout
        )
        if message is not None and _header(message, HEADER_DLQ_SOURCE) != dead_letter.source:
            message = None  # another record at these coordinates: the topic was re-created
        if message is not None:
            key, value = message.key(), message.value() or b""
            headers: list[tuple[str, bytes | str | None]] = list(message.headers() or ())
        else:
            key = dead_letter.key.encode() if dead_letter.key is not None else None
            value, headers = dead_letter.value, list(dead_letter.headers.items())
        if dead_letter.is_reference:
            try:
                reference = parse_reference(value)
            except ValueError as e:
                return skipped(str(e))
            original = read_record(
                consumer, reference.topic, reference.partition, reference.offset, self.timeout
            )
            where = f"{reference.topic}/{reference.partition}/{reference.offset}"
            if original is None:
                return skipped(f"the original record {where} is gone from Kafka (retention or compaction)")
            value = original.value() or b""
            if hashlib.sha256(value).hexdigest() != reference.sha256:
                return skipped(f"the record at {where} is not the one dead-lettered (its sha256 differs)")
            key, headers = original.key(), list(original.headers() or ())
        return Redrive(
            dead_letter,
            key,
            value,
            replay_headers(headers, replay_of),
            Outcome(dead_letter, "would send", f"{len(value):,} bytes", target),
        )

    # ---- sending and recording ------------------------------------------------------------------
    def _send(self, redrives: Sequence[Redrive]) -> None:
        producer = Producer(self.settings.producer_config(**{"linger.ms": 5}))

        def delivered(redrive: Redrive) -> Any:
            def report(err: Any, message: Any) -> None:
                if err is not None:
                    redrive.outcome.status, redrive.outcome.detail = "failed", f"Kafka refused it: {err}"
                else:
                    redrive.outcome.status = "sent"
                    redrive.outcome.target = f"{message.topic()}/{message.partition()}/{message.offset()}"

            return report

        for redrive in redrives:
            dead_letter = redrive.dead_letter
            try:
                producer.produce(
                    dead_letter.source_topic,
                    redrive.value,
                    redrive.key,
                    partition=dead_letter.source_partition,  # where its rollout's other records are
                    headers=redrive.headers,
                    on_delivery=delivered(redrive),
                )
            except Exception as e:  # BufferError, KafkaException (too large, unknown topic ...)
                redrive.outcome.status, redrive.outcome.detail = "failed", f"cannot produce it: {e}"
            producer.poll(0)
        remaining = producer.flush(self.timeout)
        for redrive in redrives:
            if redrive.outcome.status == "would send":
                redrive.outcome.status = "failed"
                redrive.outcome.detail = f"Kafka did not acknowledge it within {self.timeout:.0f} s"
        if remaining:
            logger.warning("Dead-letter replay: %d record(s) not acknowledged by Kafka", remaining)

    def _record(self, sent: Sequence[Redrive]) -> None:
        if not sent:
            return
        now = datetime.now(UTC)
        rows = []
        for redrive in sent:
            d = redrive.dead_letter
            _, partition, offset = redrive.outcome.target.rsplit("/", 2)
            rows.append(
                (d.topic_id, d.partition, d.offset, d.source_topic, d.source_partition, d.source_offset,
                 int(partition), int(offset), now)
            )  # fmt: skip
        self.clickhouse.insert(REPLAYS_TABLE, rows, column_names=REPLAY_COLUMNS)


def read_record(consumer: Consumer, topic: str, partition: int, offset: int, timeout: float) -> Any | None:
    """The record at ``topic/partition/offset``, or None when the log no longer (or never) had it.

    ``consumer`` must have ``enable.partition.eof`` on and ``auto.offset.reset=latest``: an offset
    outside the log then jumps to its end, which reports EOF.
    """
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.topic() != topic or message.partition() != partition:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    return None
                if error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION):
                    return None
                continue
            at = message.offset()
            if at is not None and at < offset:
                continue  # fetched for an earlier seek on this partition
            return message if at == offset else None
        logger.warning(
            "Dead-letter replay: nothing read from %s/%d at %d in %.0f s", topic, partition, offset, timeout
        )
        return None
    finally:
        consumer.unassign()


def _header(message: Any, name: str) -> str | None:
    for header, value in message.headers() or ():
        if header == name:
            return (value or b"").decode("utf-8", "replace")
    return None
