"""Turn what the agent recorded into Kafka records: PII redaction, Avro encoding, keys, headers,
truncation."""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from confluent_kafka.serialization import MessageField, SerializationContext

from agentstream.schemas import AvroSerializer, SerializationError, genai, load_schema
from agentstream.schemas.span import split_attributes
from agentstream.topics.catalogue import HEADER_EVENT_ID, REWARDS, ROLLOUT_EVENTS, SPANS

from .redaction import CONTENT_ATTRIBUTES, Redactor, count_attributes
from .spool import SpooledRecord

if TYPE_CHECKING:
    from agentstream.settings import Settings

    from .tracer import ActiveSpan

logger = logging.getLogger(__name__)

_MIN_KEEP_CHARS = 256


class RecordEncoder:
    """Encodes spans, rewards and rollout events for their topics. Runs on the delivery thread.

    With a ``redactor``, message content (the span attributes in
    :data:`~.redaction.CONTENT_ATTRIBUTES`, also on span events, and reward feedback) is redacted
    first; a record with redactions carries their counts (``agentstream.redacted.<entity>``), and
    :attr:`redacted` adds them up.
    """

    def __init__(
        self, settings: Settings, resource_attributes: dict[str, str], redactor: Redactor | None = None
    ) -> None:
        registry = settings.schema_registry_url
        self.span_topic = settings.topic(SPANS.name)
        self.reward_topic = settings.topic(REWARDS.name)
        self.rollout_event_topic = settings.topic(ROLLOUT_EVENTS.name)
        self._span = AvroSerializer(load_schema(SPANS.value_schema), registry)
        self._reward = AvroSerializer(load_schema(REWARDS.value_schema), registry)
        self._rollout_event = AvroSerializer(load_schema(ROLLOUT_EVENTS.value_schema), registry)
        self._span_ctx = SerializationContext(self.span_topic, MessageField.VALUE)
        self._reward_ctx = SerializationContext(self.reward_topic, MessageField.VALUE)
        self._rollout_event_ctx = SerializationContext(self.rollout_event_topic, MessageField.VALUE)
        self.resource_attributes = resource_attributes
        self.max_record_bytes = settings.sdk.max_record_bytes
        self.redactor = redactor
        #: redactions so far, per entity (the client's ``stats.redacted``)
        self.redacted: dict[str, int] = {}

    @property
    def schemas(self) -> list[Any]:
        return [self._span.schema, self._reward.schema, self._rollout_event.schema]

    # -- spans ----------------------------------------------------------------------------------------
    def span_datum(self, span: ActiveSpan) -> dict[str, Any]:
        rollout = span.rollout
        return {
            "trace_id": span.trace_id,
            "span_id": span.span_id,
            "parent_span_id": span.parent_span_id,
            "rollout_id": rollout.rollout_id if rollout is not None else "",
            "attempt_id": rollout.attempt_id if rollout is not None else "",
            "sequence_id": span.sequence_id,
            "name": span.name,
            "kind": span.kind,
            "start_time": span.start_time,
            "end_time": span.end_time,
            "status": span.status,
            "error": span.error,
            **split_attributes(span.attributes),
            "events": span.events or (),
            "resource_attributes": self.resource_attributes,
            "resource_name": span.resource_name,
            "resource_version": span.resource_version,
            "response_logprobs": span.response_logprobs,
            "prompt_token_ids": span.prompt_token_ids,
            "response_token_ids": span.response_token_ids,
        }

    def span(self, span: ActiveSpan) -> SpooledRecord:
        datum = self.span_datum(span)
        if self.redactor is not None:
            datum = self._redact_span(datum, self.redactor)
        try:
            value = self._span(datum, self._span_ctx)
        except SerializationError as e:
            datum = _sanitized(datum)
            value = self._span(datum, self._span_ctx)
            logger.warning(
                "Data error: span %s had values of the wrong type (%s); coerced them", span.span_id, e
            )
        if len(value) > self.max_record_bytes:
            value = self._truncate(datum)
        key = (datum["rollout_id"] or datum["trace_id"]).encode()
        return SpooledRecord(self.span_topic, key, value, ((HEADER_EVENT_ID, span.span_id.encode()),))

    def _redact_span(self, datum: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
        attributes, counts = redactor.redact_attributes(datum["attributes"])
        events = []
        for event in datum["events"]:
            if CONTENT_ATTRIBUTES.isdisjoint(event.get("attributes") or ()):
                events.append(event)
                continue
            event_attributes, found = redactor.redact_attributes(event["attributes"])
            events.append({**event, "attributes": event_attributes})
            counts.update(found)
        if not counts:
            return datum
        self._count(counts)
        return {
            **datum,
            "attributes": attributes,
            "events": events,
            "int_attributes": {**datum["int_attributes"], **count_attributes(counts)},
        }

    def _count(self, counts: Counter[str]) -> None:
        for entity, n in counts.items():
            self.redacted[entity] = self.redacted.get(entity, 0) + n

    def _truncate(self, datum: dict[str, Any]) -> bytes:
        """Shrink the largest payloads until the record fits, recording what was cut."""
        datum = dict(datum)
        datum["attributes"] = dict(datum["attributes"])
        datum["events"] = [dict(e, attributes=dict(e["attributes"])) for e in datum["events"]]
        cut: list[str] = []
        value = b""
        for _ in range(64):
            value = self._span(datum, self._span_ctx)
            excess = len(value) - self.max_record_bytes
            if excess <= 0:
                break
            # (size, where): an attribute, an event's attribute, or a token list
            candidates: list[tuple[int, tuple[Any, ...]]] = [
                (len(v), ("attributes", k)) for k, v in datum["attributes"].items()
            ]
            for i, event in enumerate(datum["events"]):
                candidates += [(len(v), ("event", i, k)) for k, v in event["attributes"].items()]
            candidates += [
                (len(datum[f]) * 5, ("tokens", f))
                for f in ("prompt_token_ids", "response_token_ids", "response_logprobs")
            ]
            candidates.sort(reverse=True)
            if not candidates or candidates[0][0] <= _MIN_KEEP_CHARS:
                break
            size, where = candidates[0]
            if where[0] == "tokens":
                datum[where[1]] = []
                cut.append(where[1])
                continue
            container = (
                datum["attributes"] if where[0] == "attributes" else datum["events"][where[1]]["attributes"]
            )
            key = where[-1]
            text: str = container[key]
            keep = max(_MIN_KEEP_CHARS, len(text) - excess - 64)
            container[key] = f"{text[:keep]}…[truncated {len(text) - keep} chars]"
            cut.append(key if where[0] == "attributes" else f"events[{where[1]}].{key}")
        datum["bool_attributes"] = {**datum["bool_attributes"], genai.TRUNCATED: True}
        datum["array_attributes"] = {**datum["array_attributes"], genai.TRUNCATED_KEYS: sorted(set(cut))}
        value = self._span(datum, self._span_ctx)
        if len(value) > self.max_record_bytes:
            # Pathological: thousands of small attributes. Keep the identity and the marker only.
            datum.update(attributes={}, int_attributes={}, float_attributes={}, events=[])
            value = self._span(datum, self._span_ctx)
        logger.warning(
            "Data error: span %s exceeded %d bytes and was truncated (%s)",
            datum["span_id"],
            self.max_record_bytes,
            ", ".join(sorted(set(cut))) or "attributes dropped",
        )
        return value

    # -- rewards and rollout events ---------------------------------------------------------------------
    def reward(self, datum: dict[str, Any]) -> SpooledRecord:
        if self.redactor is not None:
            datum = self._redact_reward(datum, self.redactor)
        value = self._reward(datum, self._reward_ctx)
        if len(value) > self.max_record_bytes:
            value = self._truncate_reward(datum)
        return SpooledRecord(
            self.reward_topic,
            datum["rollout_id"].encode(),
            value,
            ((HEADER_EVENT_ID, datum["reward_id"].encode()),),
        )

    def _redact_reward(self, datum: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
        attributes, counts = redactor.redact_attributes(datum["attributes"])
        feedback = datum["feedback"]
        if feedback:
            feedback, found = redactor.redact_value(feedback)
            counts.update(found)
        if not counts:
            return datum
        self._count(counts)
        counted = {k: str(n) for k, n in count_attributes(counts).items()}  # a string map
        return {**datum, "feedback": feedback, "attributes": {**attributes, **counted}}

    def _truncate_reward(self, datum: dict[str, Any]) -> bytes:
        """Shrink the feedback and the longest attributes until the reward fits, marking what was cut
        (a record Kafka would refuse must not pass for an outage, nor lose the reward itself)."""
        datum = dict(datum, attributes=dict(datum["attributes"]))
        cut: list[str] = []
        value = self._reward(datum, self._reward_ctx)
        for _ in range(64):
            if len(value) <= self.max_record_bytes:
                break
            texts = [(len(v), k) for k, v in datum["attributes"].items()]
            texts.append((len(datum["feedback"] or ""), "feedback"))
            size, key = max(texts)
            if size <= 2 * _MIN_KEEP_CHARS:
                break
            container = datum if key == "feedback" else datum["attributes"]
            text: str = container[key]
            keep = max(_MIN_KEEP_CHARS, len(text) - (len(value) - self.max_record_bytes) - 64)
            container[key] = f"{text[:keep]}…[truncated {len(text) - keep} chars]"
            cut.append(key)
            value = self._reward(datum, self._reward_ctx)
        if len(value) > self.max_record_bytes:  # thousands of small attributes: keep the judgement
            datum["attributes"], cut = {}, [*cut, "attributes"]
        datum["attributes"][genai.TRUNCATED] = "true"
        datum["attributes"][genai.TRUNCATED_KEYS] = ",".join(sorted(set(cut)))
        logger.warning(
            "Data error: reward %s exceeded %d bytes and was truncated (%s)",
            datum["reward_id"],
            self.max_record_bytes,
            ", ".join(sorted(set(cut))),
        )
        return self._reward(datum, self._reward_ctx)

    def rollout_event(self, datum: dict[str, Any]) -> SpooledRecord:
        value = self._rollout_event(datum, self._rollout_event_ctx)
        return SpooledRecord(
            self.rollout_event_topic,
            datum["rollout_id"].encode(),
            value,
            ((HEADER_EVENT_ID, datum["event_id"].encode()),),
        )


def _int32s(values: Any) -> list[int]:
    out = []
    for v in values or ():
        try:
            n = int(v)
        except (TypeError, ValueError):
            continue
        if -(2**31) <= n < 2**31:
            out.append(n)
    return out


def _floats(values: Any) -> list[float]:
    # All or nothing: a logprob list with a gap would no longer line up with the response tokens.
    try:
        return [float(v) for v in values or ()]
    except (TypeError, ValueError):
        return []


def _sanitized(datum: dict[str, Any]) -> dict[str, Any]:
    """Coerce what the agent set into the schema's types (marking the span), instead of losing it."""
    datum = dict(datum)
    datum["attributes"] = {
        str(k): v if isinstance(v, str) else str(v) for k, v in datum["attributes"].items()
    }
    datum["int_attributes"] = {str(k): int(v) for k, v in datum["int_attributes"].items()}
    datum["float_attributes"] = {str(k): float(v) for k, v in datum["float_attributes"].items()}
    datum["bool_attributes"] = {str(k): bool(v) for k, v in datum["bool_attributes"].items()}
    datum["bool_attributes"]["agentstream.sanitized"] = True
    datum["array_attributes"] = {str(k): [str(x) for x in v] for k, v in datum["array_attributes"].items()}
    datum["events"] = [
        {
            "name": str(e.get("name", "")),
            "time": int(e.get("time", 0)),
            "attributes": {str(k): str(v) for k, v in (e.get("attributes") or {}).items()},
        }
        for e in datum["events"]
    ]
    datum["prompt_token_ids"] = _int32s(datum["prompt_token_ids"])
    datum["response_token_ids"] = _int32s(datum["response_token_ids"])
    datum["response_logprobs"] = _floats(datum["response_logprobs"])
    return datum
