"""Where the stream workers' output records go: the output sink, its librdkafka producer, the
dead-letter writer and the worker's counters.

Every hop writes its outputs (tasks, triplets, metrics, timer events, dead letters and the table
changelogs, see :class:`~.app.ChangelogTable`) through one :class:`OutputSink`. In a worker that is
an :class:`OutputProducer`, flushed before any source offset is committed; a unit test passes a sink
that records what was sent, so the hops run without a broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message, Producer
from faust.types import Message as SourceMessage

from agentstream.topics import dead_letter

logger = logging.getLogger(__name__)

#: Kafka record headers as librdkafka takes them
Headers = list[tuple[str, str | bytes | None]]


class OutputSink(Protocol):
    """What the hops send output records through."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record (``partition=None``: the key's partition, by the default partitioner)."""

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued record is acknowledged; raise if one could not be delivered."""

    def warm(self, topics: Iterable[str], timeout: float = 10.0) -> None:
        """Prepare to send to ``topics`` (a producer fetches their metadata)."""


class OutputProducer:
    """The workers' output records (tasks, triplets, metrics, dead letters) and the tables'
    changelog records (see :class:`~.app.ChangelogTable`) go through librdkafka: an order of
    magnitude less CPU per record than Faust's aiokafka path. They are flushed before any source
    offset is committed (at-least-once)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._producer = Producer({**config, "error_cb": self._on_error})
        self._failed: str | None = None
        self.produced = 0

    def warm(self, topics: Iterable[str], timeout: float = 10.0) -> None:
        """Fetch the topics' metadata now, so the first records are not delayed by the lookup."""
        for topic in topics:
            self._producer.list_topics(topic, timeout=timeout)

    def _on_error(self, error: KafkaError) -> None:
        logger.warning("output producer: %s", error)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failed = f"{message.topic()}: {error}"

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        # -1 is librdkafka's "unassigned": the partitioner picks (its default for the argument)
        partition = -1 if partition is None else partition
        while True:
            try:
                self._producer.produce(
                    topic, value, key, partition, headers=headers, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self.produced += 1
        if self.produced % 1000 == 0:
            self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record is acknowledged; raise if one could not be delivered (the
        worker then restarts and re-processes from the last committed offsets)."""
        remaining = self._producer.flush(timeout)
        failed, self._failed = self._failed, None
        if remaining or failed:
            raise RuntimeError(f"output records not delivered ({remaining} pending; {failed})")


@dataclass
class WorkerStats:
    """A worker's counters since it started (written to its status file every second)."""

    events: int = 0
    triplets: int = 0
    tasks: int = 0
    dead_lettered: int = 0
    late_rewards_dropped: int = 0
    resent: int = 0
    timers_fired: int = 0
    metrics_emitted: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class DeadLetters:
    """Sends a source record that cannot be processed to the dead-letter topic, with the reason in
    its headers, so that one bad record does not stop its partition (a record too large to copy is
    sent as a reference, see :mod:`agentstream.topics.dead_letter`)."""

    outputs: OutputSink
    topic: str
    consumer: str  # the worker's app id, named in every dead letter
    stats: WorkerStats
    #: dead letters above this size are sent as references
    limit: int = field(default_factory=lambda: dead_letter.record_limit({}))

    def send(self, message: SourceMessage, error: BaseException) -> None:
        """Dead-letter ``message`` (a Faust source message) because of ``error``."""
        self.stats.dead_lettered += 1
        reason = f"{type(error).__name__}: {error}"
        source = dead_letter.Source(message.topic, message.partition, message.offset)
        letter = dead_letter.build(
            source=source,
            key=message.key,
            value=message.value,
            headers=message.headers,
            reason=reason,
            error_class=type(error).__name__,
            consumer=self.consumer,
            limit=self.limit,
        )

        def send(key: bytes | None, value: bytes | None, headers: dead_letter.Headers) -> None:
            self.outputs.send(self.topic, key, value, list(headers))

        sent = dead_letter.send(letter, source, send)
        dead_letter.log(sent, source, reason, "stream worker")
