"""What the OpenTelemetry Collector's Kafka exporter writes, consumed: ``otlp_spans`` / ``otlp_logs``.

A Collector configured with the ``kafka`` exporter writes one ``ExportTraceServiceRequest`` (or
``ExportLogsServiceRequest``) per record, ``otlp_proto`` or ``otlp_json`` encoded, to topics named by
the Collector (so without our topic prefix): ``otlp.collector_topics``. A topic whose name contains
``log`` carries logs, any other spans. With ``otlp.collector_encoding = "auto"`` a record starting
with ``{`` is OTLP/JSON, any other protobuf.

Delivery is at least once: offsets are committed only after Kafka acknowledged the normalised
records of everything before them (records are idempotent by id downstream, so a replay after a
crash writes the same records again). An undecodable record goes to the dead-letter topic with the
reason and its coordinates; the consumer goes on.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from agentstream.topics import dead_letter

from .ingest import IngestBusy, IngestResult, OtlpIngest
from .pool import BrokenProcessPool, IngestPool, Prepared
from .receiver import JSON, LOGS, PROTOBUF, TRACES, Signal

if TYPE_CHECKING:
    from agentstream.settings import Settings

logger = logging.getLogger(__name__)

CONSUMER_NAME = "otlp-collector-topics"
_BATCH = 500
_RETRY_SECONDS = 1.0


def collector_group_id(settings: Settings) -> str:
    """The consumer group of the Collector topics (one per topic prefix, so stacks stay apart)."""
    return f"{settings.topic_prefix}otlp-collector"


def signal_of(topic: str) -> Signal:
    """Logs for a topic named like logs, else traces."""
    return LOGS if "log" in topic.lower() else TRACES


def content_type(value: bytes, encoding: str) -> str:
    """The body's type under ``otlp.collector_encoding``."""
    if encoding == "otlp_json":
        return JSON
    if encoding == "otlp_proto":
        return PROTOBUF
    return JSON if value.lstrip()[:1] == b"{" else PROTOBUF


class CollectorTopicConsumer:
    """Consumes the Collector's topics into ``ingest`` until stopped.

    Args:
        settings: resolved settings (``otlp.collector_topics``, ``otlp.collector_encoding``).
        ingest: where normalised records go.
        pool: where records are decoded, normalised and encoded; default in the consumer's thread.
    """

    def __init__(self, settings: Settings, ingest: OtlpIngest, pool: IngestPool | None = None) -> None:
        self.settings = settings
        self.ingest = ingest
        self.pool = pool or IngestPool(settings, ingest.encoder, 0)
        self.topics = list(settings.otlp.collector_topics)
        self.encoding = settings.otlp.collector_encoding
        self.ack_timeout = settings.sdk.delivery_timeout_ms / 1000 + 5
        #: counters for /metrics
        self.records = 0
        self.undecodable = 0
        self.assigned = False
        self._warned: set[str] = set()

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; commits what was acknowledged before returning."""
        if not self.topics:
            return
        config = self.settings.consumer_config(
            collector_group_id(self.settings),
            **{"client.id": CONSUMER_NAME, "topic.metadata.refresh.interval.ms": 5_000},
        )
        consumer = Consumer(config)
        consumer.subscribe(self.topics, on_assign=self._on_assign)
        try:
            while not stop.is_set():
                messages = consumer.consume(_BATCH, timeout=0.5)
                batch = [m for m in messages if self._usable(m)]
                if batch and self._process(batch, stop):
                    consumer.commit(offsets=_next_offsets(batch), asynchronous=False)
        finally:
            consumer.close()

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.assigned = True

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() == KafkaError._PARTITION_EOF:
            return False
        text = f"{message.topic()}: {error.str()}"
        if text not in self._warned:  # a Collector topic that does not exist yet: say it once
            self._warned.add(text)
            logger.info("Collector topic consumer: %s", text)
        return False

    def _process(self, batch: list[Message], stop: threading.Event) -> bool:
        """Publish every record of ``batch`` and wait until Kafka acknowledged all of it; retries
        (same records, idempotent downstream) while Kafka is busy or down. False when ``stop`` came
        first (nothing is committed then: the records are read again)."""
        pending = list(batch)
        while pending and not stop.is_set():
            futures: list[tuple[Message, Future[IngestResult]]] = []
            # the workers prepare the next records while this thread publishes one
            window = max(1, 2 * self.pool.workers)
            ahead: deque[tuple[Message, Future[Prepared]]] = deque()
            try:
                for message in pending:
                    ahead.append((message, self._prepare(message)))
                    if len(ahead) > window:
                        futures.append(self._publish(*ahead.popleft()))
                while ahead:
                    futures.append(self._publish(*ahead.popleft()))
            except IngestBusy:
                pass  # wait for what is in flight, then go on from the first record not taken
            except BrokenProcessPool as e:  # a worker died: the records are prepared again
                logger.warning("Collector records lost their ingest worker: %s", e)
            for _, left in ahead:
                left.cancel()
            done = self._wait(futures)
            pending = pending[done:]
            if pending:
                stop.wait(_RETRY_SECONDS if done == 0 else 0.05)
        return not pending

    def _wait(self, futures: list[tuple[Message, Future[IngestResult]]]) -> int:
        """How many of ``futures``, from the first, Kafka acknowledged."""
        done = 0
        for message, future in futures:
            try:
                future.result(timeout=self.ack_timeout)
            except Exception as e:
                logger.warning("Collector record %s not acknowledged by Kafka: %s", _where(message), e)
                break
            done += 1
        return done

    def _prepare(self, message: Message) -> Future[Prepared]:
        value: bytes = message.value() or b""
        signal = signal_of(message.topic() or "")
        return self.pool.submit(signal.name, value, content_type(value, self.encoding))

    def _publish(self, message: Message, preparing: Future[Prepared]) -> tuple[Message, Future[IngestResult]]:
        prepared = preparing.result()
        value: bytes = message.value() or b""
        topic = message.topic() or ""
        source = dead_letter.Source(topic, message.partition() or 0, message.offset() or 0)
        self.records += 1
        if prepared.encoded is None:
            e = prepared.error
            self.undecodable += 1
            logger.warning("Data error: Collector record %s to the dead-letter topic: %s", source, e)
            letter = dead_letter.build(
                source=source,
                key=message.key(),
                value=value,
                headers=message.headers(),
                reason=str(e),
                error_class="OtlpDecodeError",
                consumer=CONSUMER_NAME,
                limit=self.ingest.record_limit,
            )
            return message, self.ingest.publish(_empty(), source=source, dead_letters=[letter])
        return message, self.ingest.publish_encoded(prepared.encoded, source=source)


def _empty() -> Any:
    from .dialects import Normalised

    return Normalised(spans=[], rewards=[], rejected=[])


def _where(message: Message) -> str:
    return f"{message.topic()}/{message.partition()}/{message.offset()}"


def _next_offsets(batch: list[Message]) -> list[TopicPartition]:
    """The offsets to commit after ``batch``: one past the last record of each partition."""
    last: dict[tuple[str, int], int] = {}
    for message in batch:
        key = (message.topic() or "", message.partition() or 0)
        last[key] = max(last.get(key, -1), message.offset() or 0)
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]


__all__ = ["CollectorTopicConsumer", "collector_group_id", "content_type", "signal_of"]
