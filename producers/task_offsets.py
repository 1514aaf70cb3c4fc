"""Which task offsets a runner may commit: per partition, up to the lowest task not done, where a
task is done once the outcome event of its attempt is acknowledged by Kafka (at least once)."""

from __future__ import annotations

import logging
import queue
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

logger = logging.getLogger("agentstream.producers.runner")

TopicPartitionKey = tuple[str, int]
#: a task record: its partition and offset
Position = tuple[TopicPartitionKey, int]

_COMMIT_INTERVAL = 0.2


class PartitionOffsets:
    """Received task offsets of one partition and whether each is done; the commit position is
    the lowest one not done (or one past the highest received)."""

    __slots__ = ("pending", "next", "committed")

    def __init__(self) -> None:
        self.pending: dict[int, bool] = {}
        self.next = -1
        self.committed = -1

    def received(self, offset: int) -> None:
        self.pending.setdefault(offset, False)
        self.next = max(self.next, offset + 1)

    def done(self, offset: int) -> None:
        if offset in self.pending:
            self.pending[offset] = True

    def position(self) -> int:
        open_offsets = [o for o, done in self.pending.items() if not done]
        position = min(open_offsets) if open_offsets else self.next
        for offset in [o for o in self.pending if o < position]:
            del self.pending[offset]
        return position


class Outcome:
    """What a runner remembers of an attempt it ran: the task records it answers (a redelivered
    copy adds one) and whether its outcome event was acknowledged by Kafka (then they may be
    committed). Guarded by the lock of the runner's attempts."""

    __slots__ = ("positions", "delivered")

    def __init__(self, positions: list[Position]) -> None:
        self.positions = positions
        self.delivered = False


class TaskOffsets:
    """The task offsets of the partitions a runner holds, and their commits.

    Used on the runner's consumer thread, except :meth:`acknowledged`, which the delivery thread
    calls when an outcome event reached Kafka.
    """

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.partitions: dict[TopicPartitionKey, PartitionOffsets] = {}
        self._acks: queue.SimpleQueue[list[Position]] = queue.SimpleQueue()
        self._last_commit = 0.0
        self._acked_since_commit = False

    def received(self, key: TopicPartitionKey, offset: int) -> PartitionOffsets:
        """Note a task record taken from the topic; returns its partition's offsets."""
        part = self.partitions.get(key)
        if part is None:
            part = self.partitions[key] = PartitionOffsets()
        part.received(offset)
        return part

    def acknowledged(self, positions: list[Position]) -> None:
        """These task records are done: their attempt's outcome is in Kafka (any thread)."""
        self._acks.put(positions)

    def drain_acks(self) -> None:
        """Mark the acknowledged task records done."""
        while True:
            try:
                positions = self._acks.get_nowait()
            except queue.Empty:
                return
            for key, offset in positions:
                part = self.partitions.get(key)
                if part is not None:  # else: revoked meanwhile; its new owner decides
                    part.done(offset)
            self._acked_since_commit = True

    def maybe_commit(self, consumer: Consumer | None) -> None:
        """Commit if tasks were done since the last commit, at most every 0.2 s."""
        if self._acked_since_commit and time.monotonic() - self._last_commit >= _COMMIT_INTERVAL:
            self.commit(consumer)

    def commit(
        self, consumer: Consumer | None, sync: bool = False, only: set[TopicPartitionKey] | None = None
    ) -> None:
        """Commit each partition (or those in ``only``) up to its lowest task not done."""
        if consumer is None:
            return
        self._acked_since_commit = False
        self._last_commit = time.monotonic()
        offsets = []
        for key, part in self.partitions.items():
            if only is not None and key not in only:
                continue
            position = part.position()
            if position >= 0 and (position > part.committed or (sync and position == part.committed)):
                offsets.append(TopicPartition(key[0], key[1], position))
                part.committed = position
        if not offsets:
            return
        try:
            if sync:
                consumer.commit(offsets=offsets, asynchronous=False)
            else:
                consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as e:
            # Not fatal: the tasks are run again by whoever gets the partition (at least once).
            logger.warning("Runner %s: offset commit failed: %s", self.worker_id, e)
            for tp in offsets:
                failed = self.partitions.get((tp.topic, tp.partition))
                if failed is not None:
                    failed.committed = -1

    def assigned(self, keys: list[TopicPartitionKey]) -> None:
        """Partitions given to this runner."""
        for key in keys:
            self.partitions.setdefault(key, PartitionOffsets())

    def forget(self, keys: set[TopicPartitionKey]) -> None:
        """Partitions taken from this runner: their offsets are their new owner's to commit."""
        for key in keys:
            self.partitions.pop(key, None)
