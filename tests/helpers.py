"""Test helpers that talk to the real broker."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from agentstream.schemas import AvroDeserializer
from agentstream.settings import Settings


def read_topic(
    settings: Settings,
    topic: str,
    expected: int | None = None,
    timeout: float = 15.0,
    decode: bool = True,
    quiet: float = 1.0,
) -> list[Any]:
    """Every record of ``topic`` (all partitions, from the beginning).

    Stops when ``expected`` records were read, or when nothing arrived for ``quiet`` seconds after
    ``timeout``... whichever comes first; decoded with the shipped schemas unless ``decode=False``
    (then the raw messages are returned).
    """
    consumer = Consumer(settings.consumer_config("test-reader", **{"enable.partition.eof": False}))
    metadata = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.topics[topic].partitions])
    deserializer = AvroDeserializer()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expected is not None and len(records) >= expected:
                break
            if expected is None and records and time.monotonic() - last > quiet:
                break
            for message in consumer.consume(1000, timeout=0.1):
                if message.error():
                    continue
                last = time.monotonic()
                records.append(deserializer(message.value()) if decode else message)
    finally:
        consumer.close()
    return records
