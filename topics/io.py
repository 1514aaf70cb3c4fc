"""Topics as logs of state, read and written by the control plane: runners, trainers and the
promotion controller follow compacted topics (resources, labels, metrics, rollout states) with a
:class:`TopicReader`, and append versions, label moves and decisions with a :class:`RecordWriter`.

A reader assigns every partition of its topics (no group join, so no rebalance delays), starts at
the beginning or at the current end, decodes each record with the shipped Avro schemas, and hands
``(topic, key, model)`` to a callback. "Caught up" means every partition's position has reached the
high watermark reported by a Fetch response, never the broker's ListOffsets answer (which some
brokers, the embedded one included, get wrong).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.serialization import MessageField, SerializationContext

from agentstream.schemas import MODELS, AvroDeserializer, AvroSerializer, MalformedRecordError, SchemaStore
from agentstream.schemas.record import AvroRecord
from agentstream.settings import Settings
from agentstream.topics.catalogue import SCHEMAS, TopicSpec
from agentstream.topics.schema_resolver import SchemaTopicResolver

logger = logging.getLogger(__name__)

#: ``on_record(topic_spec, key, record)``; ``record`` is the topic's pydantic model.
RecordCallback = Callable[[TopicSpec, bytes | None, Any], None]


class TopicReader:
    """Follows topics from the beginning (``start="beginning"``) or from their end at open time.

    Args:
        settings: where Kafka is (resolved).
        topics: catalogue entries whose records to read (their ``value_schema`` decodes them).
        on_record: called for every decoded record, on the thread that polls.
        start: where to begin.
        name: for the client id and logs.

    Use :meth:`poll` from your own loop, or :meth:`start` for a background thread; both stop at
    :meth:`close`. Undecodable records are logged and skipped (their producers' dead-letter
    handling is upstream of here).
    """

    def __init__(
        self,
        settings: Settings,
        topics: Iterable[TopicSpec],
        on_record: RecordCallback,
        *,
        start: Literal["beginning", "end"] = "beginning",
        name: str = "reader",
    ) -> None:
        self.settings = settings
        self.specs = {settings.topic(spec.name): spec for spec in topics}
        self.on_record = on_record
        self.name = name
        self._start = start
        self._consumer: Consumer | None = None
        self._partitions: list[TopicPartition] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        resolver = SchemaTopicResolver(settings.consumer_config("unused"), settings.topic(SCHEMAS.name))
        self._deserializer = AvroDeserializer(
            store=SchemaStore.shipped(resolver), registry=settings.schema_registry_url
        )
        self.records = 0

    # ---- lifecycle ----------------------------------------------------------------------------------
    def open(self, timeout: float = 15.0) -> TopicReader:
        if self._consumer is not None:
            return self
        config = self.settings.consumer_config(
            f"agentstream-{self.name}-{uuid.uuid4().hex[:8]}",  # never joined: assign() only
            **{"enable.partition.eof": False, "client.id": f"agentstream-{self.name}"},
        )
        consumer = Consumer(config)
        metadata = consumer.list_topics(timeout=timeout)
        partitions: list[TopicPartition] = []
        for topic in self.specs:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None or not info.partitions:
                consumer.close()
                raise RuntimeError(f"topic {topic} does not exist: run `agentstream topics create` (or `up`)")
            partitions.extend(TopicPartition(topic, p, 0) for p in sorted(info.partitions))
        if self._start == "end":
            ends = high_watermarks(consumer, [(tp.topic, tp.partition) for tp in partitions], timeout)
            partitions = [
                TopicPartition(tp.topic, tp.partition, ends[(tp.topic, tp.partition)]) for tp in partitions
            ]
        consumer.assign(partitions)
        self._partitions = partitions
        self._consumer = consumer
        return self

    def start(self) -> TopicReader:
        """Open, then follow in a daemon thread until :meth:`close`."""
        self.open()
        self._thread = threading.Thread(target=self._follow, name=f"agentstream-{self.name}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None

    def __enter__(self) -> TopicReader:
        return self.open()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ---- reading ------------------------------------------------------------------------------------
    def poll(self, timeout: float = 0.1, max_records: int = 1000) -> int:
        """Read what is there (waiting up to ``timeout``); returns how many records were handled."""
        with self._lock:
            consumer = self._consumer
            if consumer is None:
                raise RuntimeError("the reader is not open")
            messages = consumer.consume(num_messages=max_records, timeout=timeout)
            handled = 0
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        logger.warning("%s: consumer error: %s", self.name, error)
                    continue
                topic = message.topic()
                assert topic is not None  # only error events lack a topic, and those were skipped
                spec = self.specs[topic]
                try:
                    record = self._decode(spec, message.value())
                except (MalformedRecordError, ValueError) as e:
                    logger.error(
                        "%s: skipping undecodable record %s[%d]@%d: %s",
                        self.name,
                        message.topic(),
                        message.partition(),
                        message.offset(),
                        e,
                    )
                    continue
                self.on_record(spec, message.key(), record)
                handled += 1
            self.records += handled
            if not self._caught_up.is_set() and self._at_end(consumer):
                self._caught_up.set()
            return handled

    def wait_caught_up(self, timeout: float = 15.0) -> bool:
        """Block until everything present at open time has been handed over (polling if no thread)."""
        deadline = time.monotonic() + timeout
        while not self._caught_up.is_set() and time.monotonic() < deadline:
            if self._error is not None:
                raise RuntimeError(f"{self.name} failed") from self._error
            if self._thread is None:
                self.poll(0.05)
            else:
                self._caught_up.wait(0.05)
        return self._caught_up.is_set()

    def read_to_end(self, timeout: float = 15.0) -> int:
        """Open, read everything there is now, and close (for one-shot readers such as the CLI)."""
        self.open()
        try:
            if not self.wait_caught_up(timeout):
                raise TimeoutError(
                    f"{self.name}: did not reach the end of {sorted(self.specs)} in {timeout}s"
                )
            return self.records
        finally:
            self.close()

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def _follow(self) -> None:
        while not self._closed.is_set():
            try:
                self.poll(0.1)
            except RuntimeError:
                return  # closed meanwhile
            except Exception as e:  # a dead follower must be visible, not silent
                self._error = e
                logger.exception("%s stopped", self.name)
                return

    def _decode(self, spec: TopicSpec, value: bytes | None) -> Any:
        if spec.value_schema is None:
            return value
        if value is None:
            raise ValueError("tombstone")
        return MODELS[spec.value_schema].from_avro(self._deserializer(value))

    def _at_end(self, consumer: Consumer) -> bool:
        try:
            positions = consumer.position(self._partitions)
        except KafkaException:
            return False
        for tp in positions:
            _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), cached=True)
            if high < 0:
                return False  # no fetch response yet
            if high > 0 and tp.offset < high:
                return False  # tp.offset is -1001 (invalid) until a record was consumed
        return True


def high_watermarks(
    consumer: Consumer, partitions: Iterable[tuple[str, int]], timeout: float = 10.0
) -> dict[tuple[str, int], int]:
    """End offset of each ``(topic, partition)`` as a Fetch response reports it.

    ListOffsets(LATEST) only picks where to fetch: on some brokers (the embedded one included) it
    trails the true end. The consumer's assignment is replaced, and cleared on return.
    """
    partitions = list(partitions)
    if not partitions:
        return {}
    assignment = []
    for topic, partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        assignment.append(TopicPartition(topic, partition, max(high - 1, low, 0)))
    consumer.assign(assignment)
    try:
        result: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + timeout
        while len(result) < len(partitions) and time.monotonic() < deadline:
            consumer.consume(num_messages=100, timeout=0.1)
            for topic, partition in partitions:
                if (topic, partition) not in result:
                    _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                    if high >= 0:
                        result[(topic, partition)] = high
    finally:
        consumer.unassign()
    missing = [tp for tp in partitions if tp not in result]
    if missing:
        raise TimeoutError(f"no fetch response for {missing} within {timeout}s")
    return result


class RecordWriter:
    """Appends Avro records one at a time and waits until Kafka has each (idempotent, acks=all).

    Meant for low-rate control records (resource versions, label moves, decisions), where the
    caller must know the record is in the log before it goes on. Writer schemas are published to
    the schemas topic once, unless a Schema Registry is configured.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Producer | None = None
        self._serializers: dict[str, AvroSerializer] = {}

    def write(self, spec: TopicSpec, key: str, record: AvroRecord, timeout: float = 15.0) -> None:
        if self._producer is None:
            self._producer = Producer(self.settings.producer_config(**{"linger.ms": 0}))
        serializer = self._serializers.get(spec.name)
        if serializer is None:
            serializer = AvroSerializer(record.avro_schema(), self.settings.schema_registry_url)
            self._serializers[spec.name] = serializer
            if not self.settings.schema_registry_url:
                schema = serializer.schema
                self._producer.produce(
                    self.settings.topic(SCHEMAS.name),
                    key=schema.fingerprint.hex().encode(),
                    value=schema.json.encode(),
                )
        topic = self.settings.topic(spec.name)
        value = serializer(record.to_avro(), SerializationContext(topic, MessageField.VALUE))
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        self._producer.produce(topic, value=value, key=key.encode(), on_delivery=delivered)
        if self._producer.flush(timeout) > 0:
            raise TimeoutError(f"{topic}: not acknowledged within {timeout}s")
        if errors:
            raise RuntimeError(f"{topic}: delivery failed: {errors[0]}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
