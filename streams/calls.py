"""What a triplet needs of an LLM call, kept out of the joiner's changelog.

The spans topic already stores every call durably (retention ≥ the late-reward horizon). The joiner
therefore remembers only *where* a call's span is (partition, offset) in its table, keeps the
content of recent calls in a bounded in-memory cache, and re-reads a span from Kafka on a cache miss
(after a restart, or for a reward much later than its call). This keeps the changelog small (no
prompt or token ids in it) and memory bounded.

Calls are keyed by ``(rollout_id, span_id)`` everywhere: span ids are unique per trace only, and
spans imported or received over OTLP from other systems do share them across rollouts (a cache keyed
by span id alone put one rollout's prompt into another's triplet).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from agentstream.schemas import CreditAssignment, RolloutState, Triplet, genai
from agentstream.settings import StreamSettings

from .join import TripletUpdate


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


#: a call's key in the cache: (rollout id, span id)
CallKey = tuple[str, str]


class CallContentStore:
    """LRU cache of call contents by ``(rollout_id, span_id)``, backed by the spans topic.

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
        self._cache: OrderedDict[CallKey, dict[str, Any]] = OrderedDict()
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()
        self.rereads = 0

    def put(self, rollout_id: str, span_id: str, content: dict[str, Any]) -> None:
        """Keep the content of the call ``span_id`` of rollout ``rollout_id``."""
        cache = self._cache
        key = (rollout_id, span_id)
        cache[key] = content
        cache.move_to_end(key)
        while len(cache) > self._capacity:
            cache.popitem(last=False)

    def cached(self, rollout_id: str, span_id: str) -> dict[str, Any] | None:
        """The kept content of the call ``span_id`` of rollout ``rollout_id``, if still in memory."""
        key = (rollout_id, span_id)
        content = self._cache.get(key)
        if content is not None:
            self._cache.move_to_end(key)
        return content

    def fetch(
        self, rollout_id: str, wanted: Mapping[str, tuple[int, int]], timeout: float = 10.0
    ) -> dict[str, dict[str, Any]]:
        """Re-read calls of rollout ``rollout_id`` (span id -> (partition, offset)) from Kafka in one
        pass per partition; a record at that offset that is another rollout's span is not taken.

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
                            if span["span_id"] == wanted_id and span["rollout_id"] == rollout_id:
                                content = call_content(span)
                                self.put(rollout_id, wanted_id, content)
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


def strategy_for(state: RolloutState | None, streams: StreamSettings) -> tuple[str, float]:
    """The credit assignment and discount of a rollout, chosen as the live joiner chooses them: its
    own config's, else the settings' for its task type, else the defaults."""
    config = state.config if state is not None else None
    if config is not None and config.credit_assignment:
        strategy = CreditAssignment(config.credit_assignment).value
    else:
        task_type = state.task_type if state is not None else ""
        strategy = streams.credit_assignment.get(task_type, streams.default_credit_assignment)
    discount = config.discount if config is not None and config.discount else streams.discount
    return CreditAssignment(strategy).value, discount


def triplet_from_update(
    rollout_id: str,
    update: TripletUpdate,
    content: Mapping[str, Any],
    *,
    strategy: str,
    task_type: str,
    mode: str,
    emitted_at: int,
) -> Triplet:
    """The triplet of one joiner update: the call's content (:func:`.calls.call_content`), its credit
    (``None``: reward and feedback null), and the rollout's strategy, task type and mode."""
    credit = update.credit
    return Triplet(
        triplet_id=update.triplet_id,
        version=update.version,
        rollout_id=rollout_id,
        attempt_id=update.attempt_id,
        span_id=update.span_id,
        step=update.step,
        prompt_messages=content["prompt"],
        prompt_token_ids=content["prompt_ids"],
        response=content["response"],
        response_token_ids=content["response_ids"],
        response_logprobs=content["response_logprobs"],
        reward=credit.reward if credit is not None else None,
        reward_dimensions=credit.by_dimension if credit is not None else {},
        retracted=update.retracted,
        feedback=credit.feedback if credit is not None else None,
        credit_assignment=strategy,
        resource_name=content["resource_name"],
        resource_version=content["resource_version"],
        mode=mode,
        task_type=task_type,
        model=content["model"],
        created_at=content["created_at"],
        emitted_at=emitted_at,
    )
