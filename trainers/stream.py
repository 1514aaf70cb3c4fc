"""The triplet topic read in windows, for one trainer (its own consumer group, offsets committed by hand).

    stream = TripletStream(settings, "sft-support", TripletFilter(task_types=("support",)), window_count=256)
    with stream:
        window = stream.next_window()        # a deduped, filtered window and the offsets it covers
        ...train on window.triplets, publish a version whose lineage carries window.lineage()...
        stream.commit(window)                 # only now: offsets move past the window

How this gives exactly-once training without Kafka transactions: see :mod:`.runtime`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from agentstream.schemas import AvroDeserializer, MalformedRecordError, SchemaStore, Triplet
from agentstream.settings import Settings
from agentstream.topics.catalogue import SCHEMAS, TRIPLETS
from agentstream.topics.schema_resolver import SchemaTopicResolver

from .windows import TripletFilter, TripletWindow

logger = logging.getLogger(__name__)

__all__ = ["TRAINED_MEMORY", "Recover", "TripletStream"]

#: ``recover(partitions) -> {partition: offset}``: where published windows end (see :mod:`.runtime`).
Recover = Callable[[list[int]], dict[int, int]]
#: triplet ids a stream remembers as trained (re-emissions after late rewards come within hours)
TRAINED_MEMORY = 500_000


class _OpenWindow:
    """The window being filled: offset ranges, and the latest version of every triplet id seen."""

    def __init__(self) -> None:
        self.ranges: dict[int, tuple[int, int]] = {}
        self.latest: dict[str, Triplet] = {}
        self.accepted: dict[str, None] = {}  # ordered set
        self.records = 0
        self.first_accepted_at: float | None = None

    def consumed(self, partition: int, offset: int, start: int | None) -> None:
        first, _ = self.ranges.get(partition, (offset if start is None else start, offset))
        self.ranges[partition] = (first, offset + 1)
        self.records += 1


class TripletStream:
    """Reads the triplet topic in windows for the trainer ``name``.

    Args:
        settings: where Kafka is (resolved); ``settings.trainer`` gives the group prefix and timeouts.
        name: the trainer's name: its consumer group is ``settings.trainer.group_id_prefix + name``.
        triplet_filter: which triplets count.
        window_count: a window closes once this many distinct accepted triplets are in it.
        window_seconds: ...or this long after its first accepted triplet (``None``: count only).
        recover: where published windows end, per partition (see the module doc); consulted at
            every assignment.
        skip_trained: drop triplet ids this process already trained (re-emissions after late rewards).
    """

    def __init__(
        self,
        settings: Settings,
        name: str,
        triplet_filter: TripletFilter | None = None,
        *,
        window_count: int | None = None,
        window_seconds: float | None = None,
        recover: Recover | None = None,
        skip_trained: bool = True,
    ) -> None:
        self.settings = settings.resolved()
        self.name = name
        self.filter = triplet_filter or TripletFilter()
        self.window_count = window_count or self.settings.trainer.window_count
        self.window_seconds = (
            window_seconds if window_seconds is not None else self.settings.trainer.window_seconds
        )
        self.recover = recover
        self.skip_trained = skip_trained
        self.topic = self.settings.topic(TRIPLETS.name)
        self.group_id = f"{self.settings.trainer.group_id_prefix}{name}"
        self._consumer: Consumer | None = None
        #: where the next window starts per assigned partition (``None``: the first record read)
        self._starts: dict[int, int | None] = {}
        self._pending: deque[Message] = deque()
        self._window = _OpenWindow()
        self._trained: OrderedDict[str, int] = OrderedDict()
        self._last_progress_commit = 0.0
        resolver = SchemaTopicResolver(
            self.settings.consumer_config("unused"), self.settings.topic(SCHEMAS.name)
        )
        self._deserializer = AvroDeserializer(
            store=SchemaStore.shipped(resolver), registry=self.settings.schema_registry_url
        )
        self.undecodable = 0

    # ---- lifecycle ----------------------------------------------------------------------------------
    def open(self) -> TripletStream:
        if self._consumer is not None:
            return self
        timeout_ms = self.settings.trainer.session_timeout_ms
        consumer = Consumer(
            self.settings.consumer_config(
                self.group_id,
                **{
                    "client.id": f"agentstream-trainer-{self.name}",
                    "session.timeout.ms": timeout_ms,
                    "heartbeat.interval.ms": max(100, min(1_000, timeout_ms // 3)),
                    # training a window can take long: the group must not evict us meanwhile
                    "max.poll.interval.ms": 24 * 3600 * 1000,
                },
            )
        )
        consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self._consumer = consumer
        return self

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> TripletStream:
        return self.open()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def assignment(self) -> list[int]:
        return sorted(self._starts)

    @property
    def filling(self) -> int:
        """Accepted triplets in the window being filled."""
        return len(self._window.accepted)

    # ---- windows ------------------------------------------------------------------------------------
    def next_window(
        self,
        stop: threading.Event | None = None,
        timeout: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> TripletWindow | None:
        """Block until a window closes; ``None`` when ``stop`` is set or ``timeout`` passes first.

        ``progress(accepted, consumed)`` is called as the window fills. Records after the closing
        one stay buffered for the next window.
        """
        consumer = self._require_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            closed = self._drain_pending()
            if closed is not None:
                return closed
            if stop is not None and stop.is_set():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                return None
            self._pending.extend(consumer.consume(num_messages=500, timeout=0.1))
            if progress is not None:
                progress(len(self._window.accepted), self._window.records)
            if not self._pending:
                closed = self._close_if_due(time.monotonic())
                if closed is not None:
                    return closed
                self._commit_idle_progress()

    def commit(self, window: TripletWindow) -> None:
        """Move the group's offsets past ``window`` (after its version is published)."""
        consumer = self._require_open()
        offsets = [TopicPartition(self.topic, p, end) for p, (_, end) in sorted(window.ranges.items())]
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=False)
        if self.skip_trained:
            for triplet in window.triplets:
                self._trained[triplet.triplet_id] = triplet.version
            while len(self._trained) > TRAINED_MEMORY:
                self._trained.popitem(last=False)

    # ---- internals ----------------------------------------------------------------------------------
    def _require_open(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the triplet stream is not open")
        return self._consumer

    def _drain_pending(self) -> TripletWindow | None:
        while self._pending:
            message = self._pending.popleft()
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    logger.warning("%s: consumer error: %s", self.name, error)
                continue
            partition, offset = message.partition(), message.offset()
            if partition not in self._starts:
                continue  # fetched before a revocation: it will be read again by its new owner
            if offset is None:
                continue  # only a message that was never produced has none
            self._window.consumed(partition, offset, self._starts[partition])
            triplet = self._decode(message)
            if triplet is not None:
                self._add(triplet)
            closed = self._close_if_due(time.monotonic())
            if closed is not None:
                return closed
        return None

    def _decode(self, message: Message) -> Triplet | None:
        try:
            value = message.value()
            if value is None:
                raise MalformedRecordError("tombstone")
            return Triplet.from_avro(self._deserializer(value))
        except (MalformedRecordError, ValueError) as e:
            self.undecodable += 1
            logger.error(
                "%s: skipping undecodable triplet %s[%d]@%d: %s",
                self.name,
                message.topic(),
                message.partition(),
                message.offset(),
                e,
            )
            return None

    def _add(self, triplet: Triplet) -> None:
        window = self._window
        trained = self._trained.get(triplet.triplet_id)
        if trained is not None:
            logger.debug(
                "%s: %s v%d was already trained (v%d)",
                self.name,
                triplet.triplet_id,
                triplet.version,
                trained,
            )
            return
        current = window.latest.get(triplet.triplet_id)
        if current is not None and current.version >= triplet.version:
            return  # a re-delivered or older revision
        window.latest[triplet.triplet_id] = triplet
        if self.filter.accepts(triplet):
            window.accepted[triplet.triplet_id] = None
            if window.first_accepted_at is None:
                window.first_accepted_at = time.monotonic()
        else:
            window.accepted.pop(triplet.triplet_id, None)  # a later revision may fall out (a lower reward)

    def _close_if_due(self, now: float) -> TripletWindow | None:
        window = self._window
        if not window.accepted:
            return None
        if len(window.accepted) >= self.window_count:
            return self._close("count")
        if (
            self.window_seconds is not None
            and window.first_accepted_at is not None
            and now - window.first_accepted_at >= self.window_seconds
        ):
            return self._close("time")
        return None

    def _close(self, closed_by: str) -> TripletWindow:
        window = self._window
        closed = TripletWindow(
            topic=self.topic,
            group_id=self.group_id,
            ranges=dict(window.ranges),
            triplets=[window.latest[i] for i in window.accepted],
            records=window.records,
            closed_by=closed_by,
        )
        for partition, (_, end) in window.ranges.items():
            self._starts[partition] = end
        self._window = _OpenWindow()
        return closed

    def _commit_idle_progress(self) -> None:
        """Records that were all filtered out need no training: commit past them (at most once a second)."""
        window = self._window
        if window.accepted or not window.ranges or time.monotonic() - self._last_progress_commit < 1.0:
            return
        consumer = self._require_open()
        offsets = [TopicPartition(self.topic, p, end) for p, (_, end) in sorted(window.ranges.items())]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            logger.warning("%s: could not commit filtered-out records: %s", self.name, e)
            return
        for partition, (_, end) in window.ranges.items():
            self._starts[partition] = end
        self._window = _OpenWindow()
        self._last_progress_commit = time.monotonic()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        committed: dict[int, int] = {}
        try:
            for tp in consumer.committed(partitions, timeout=10):
                if tp.offset >= 0:
                    committed[tp.partition] = tp.offset
        except KafkaException as e:
            logger.warning(
                "%s: could not read committed offsets (%s); the broker's positions are used", self.name, e
            )
        published = self.recover(numbers) if self.recover is not None else {}
        ahead = []
        for tp in partitions:
            start = committed.get(tp.partition)
            end = published.get(tp.partition)
            if end is not None and (start is None or end > start):
                # published, but the commit was lost: never read that window again
                logger.warning(
                    "%s: partition %d resumes at %d, where its last published window ended (committed: %s)",
                    self.name,
                    tp.partition,
                    end,
                    start,
                )
                start = end
                ahead.append(TopicPartition(self.topic, tp.partition, end))
            if start is not None:
                tp.offset = start
            self._starts[tp.partition] = start
        consumer.assign(partitions)
        if ahead:
            try:
                consumer.commit(offsets=ahead, asynchronous=False)
            except KafkaException as e:  # the next window's commit covers these offsets anyway
                logger.warning("%s: could not commit recovered offsets: %s", self.name, e)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # the eager assignor takes every partition back: the open window (never committed) is
        # dropped and re-read from the committed offsets by whoever gets the partitions
        self._starts.clear()
        self._pending.clear()
        self._window = _OpenWindow()
