"""What a triplet needs of an LLM call, kept out of the joiner's changelog.

The spans topic already stores every call durably (retention ≥ the late-reward horizon). The joiner
therefore remembers only *where* a call's span is (partition, offset) in its table, keeps the
content of recent calls in a bounded in-memory cache, and re-reads a span from Kafka on a cache miss
(after a restart, or for a reward much later than its call). This keeps the changelog small (no
prompt or token ids in it) and memory bounded.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from agentstream.schemas import genai


def call_content(span: Mapping[str, Any]) -> dict[str, Any]:
    """The triplet fields of an LLM-call span (a decoded span record)."""
    attributes = span["attributes"]
    return {
        "prompt": attributes.get(genai.INPUT_MESSAGES, "[]"),
        "response": attributes.get(genai.OUTPUT_MESSAGES, "[]"),
        "prompt_ids": span["prompt_token_ids"],
        "response_ids": span["response_token_ids"],
        "response_logprobs": span["response_logprobs"],
        "model": attributes.get(genai.RESPONSE_MODEL) or attributes.get(genai.REQUEST_MODEL, ""),
        "resource_name": span["resource_name"],
        "resource_version": span["resource_version"],
        "created_at": span["start_time"],
    }


class CallContentStore:
    """LRU cache of call contents by span id, backed by the spans topic.

    Args:
        consumer_config: librdkafka settings for the re-reading consumer (no group is joined).
        topic: the spans topic.
        decode: decodes a span record's bytes.
        capacity: calls kept in memory.
    """

    def __init__(
        self,
        consumer_config: Mapping[str, Any],
        topic: str,
        decode: Callable[[bytes | None], dict[str, Any]],
        capacity: int,
    ) -> None:
        self._config = {
            **consumer_config,
            "group.id": f"agentstream-span-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
        self._topic = topic
        self._decode = decode
        self._capacity = capacity
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()
        self.rereads = 0

    def put(self, span_id: str, content: dict[str, Any]) -> None:
        cache = self._cache
        cache[span_id] = content
        cache.move_to_end(span_id)
        while len(cache) > self._capacity:
            cache.popitem(last=False)

    def cached(self, span_id: str) -> dict[str, Any] | None:
        content = self._cache.get(span_id)
        if content is not None:
            self._cache.move_to_end(span_id)
        return content

    def fetch(
        self, wanted: Mapping[str, tuple[int, int]], timeout: float = 10.0
    ) -> dict[str, dict[str, Any]]:
        """Re-read spans (span id -> (partition, offset)) from Kafka in one pass per partition.

        Blocking: call it from an executor. Spans not found within ``timeout`` are left out.
        """
        if not wanted:
            return {}
        by_partition: dict[int, dict[int, str]] = {}
        for span_id, (at_partition, at_offset) in wanted.items():
            by_partition.setdefault(at_partition, {})[at_offset] = span_id
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            if self._consumer is None:
                self._consumer = Consumer(self._config)
            consumer = self._consumer
            consumer.assign(
                [TopicPartition(self._topic, p, min(offsets)) for p, offsets in by_partition.items()]
            )
            try:
                deadline = time.monotonic() + timeout
                pending = {p: dict(offsets) for p, offsets in by_partition.items()}
                while pending and time.monotonic() < deadline:
                    for message in consumer.consume(500, timeout=0.05):
                        if message.error() is not None:
                            continue
                        partition, offset = message.partition(), message.offset()
                        if partition is None or offset is None:
                            continue
                        offsets = pending.get(partition)
                        if offsets is None:
                            continue
                        wanted_id = offsets.pop(offset, None)
                        if wanted_id is not None:
                            span = self._decode(message.value())
                            if span["span_id"] == wanted_id:
                                content = call_content(span)
                                self.put(wanted_id, content)
                                found[wanted_id] = content
                                self.rereads += 1
                        if not offsets:
                            pending.pop(partition, None)
            finally:
                consumer.unassign()
        return found

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
