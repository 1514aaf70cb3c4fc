"""Writer schemas published on the compacted schemas topic, for readers without a registry.

Producers publish each writer schema once (key: fingerprint hex, value: the full schema JSON).
A reader that meets an unknown fingerprint reads the topic and learns it, so records written by a
newer producer stay readable by an older consumer.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from agentstream.schemas import AvroSchema

logger = logging.getLogger(__name__)


class SchemaTopicResolver:
    """A :class:`~.serde.SchemaStore` resolver backed by the schemas topic.

    Args:
        consumer_config: librdkafka configuration (bootstrap servers, security); a throwaway group
            is used and offsets are never committed.
        topic: the schemas topic.
        min_interval: seconds between re-reads of the topic for fingerprints still unknown.
    """

    def __init__(self, consumer_config: dict[str, Any], topic: str, min_interval: float = 5.0) -> None:
        self._config = {
            **consumer_config,
            "group.id": f"agentstream-schema-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
        self._topic = topic
        self._min_interval = min_interval
        self._known: dict[bytes, AvroSchema] = {}
        self._last_read = 0.0
        self._lock = threading.Lock()

    def __call__(self, fingerprint: bytes) -> AvroSchema | None:
        with self._lock:
            if fingerprint not in self._known and time.monotonic() - self._last_read >= self._min_interval:
                self._read_all()
            return self._known.get(fingerprint)

    def _read_all(self, timeout: float = 5.0) -> None:
        self._last_read = time.monotonic()
        consumer = Consumer(self._config)
        try:
            # assign() skips the group join; read until the fetch high watermark (not ListOffsets,
            # which some brokers answer wrongly).
            consumer.assign([TopicPartition(self._topic, 0, 0)])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                messages = consumer.consume(500, timeout=0.2)
                for message in messages:
                    value = message.value()
                    if message.error() or not value:
                        continue
                    try:
                        schema = AvroSchema.from_definition(value.decode())
                    except Exception as e:
                        logger.warning("Data error: unreadable schema on %s: %s", self._topic, e)
                        continue
                    self._known[schema.fingerprint] = schema
                _, high = consumer.get_watermark_offsets(TopicPartition(self._topic, 0), cached=True)
                position = max(consumer.position([TopicPartition(self._topic, 0)])[0].offset, 0)
                if not messages and high >= 0 and position >= high:
                    break
        finally:
            consumer.close()
