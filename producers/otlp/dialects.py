"""The dialect normaliser: OTLP spans and log records -> agentstream Span and Reward datums.

One code path walks the tables of :mod:`.dialect_table`: it recognises a span's dialect, decides its
kind, rebuilds its chat messages in the OTel parts schema (``gen_ai.input.messages`` /
``gen_ai.output.messages``, see :mod:`agentstream.schemas.genai`), copies old attribute names onto
the canonical ones, lifts token ids and log-probabilities into their fields and turns rewards and
evaluations into Reward datums. Every attribute it does not know is kept verbatim.

It is deterministic and stateless: the same span always gives the same datums (ids derived from the
span, ``sequence_id=0``, no wall clock), so any split or order of batches gives the same records.
What cannot be made valid is returned as :class:`Rejected` (for the dead-letter topic), never raised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentstream.schemas import genai
from agentstream.schemas.validation import MAX_TIME_US, MIN_TIME_US, InvalidRecordError, validate

from . import dialect_table as t
from .decode import OtlpLogRecord, OtlpSpan
from .messages import indexed_messages, otel_messages, verbatim
from .rewards import is_reward_span, span_rewards
from .values import (
    first,
    floats,
    int32s,
    number,
    parsed,
    rollout_ids,
    str_or_none,
    strings,
    to_json,
    truthy,
    typed_maps,
)

__all__ = ["Normalised", "Rejected", "normalise_logs", "normalise_spans"]

_STATUS = ("unset", "ok", "error")


@dataclass(slots=True)
class Rejected:
    """Something the normaliser could not turn into a valid record, with the reason."""

    reason: str  # one line, says what and why
    kind: str  # "span" | "log"
    ident: str  # span id / "trace:span" / log index, for the dead-letter record


@dataclass(slots=True)
class Normalised:
    spans: list[dict[str, Any]] = field(default_factory=list)  # Span Avro datums (span.avsc)
    rewards: list[dict[str, Any]] = field(default_factory=list)  # Reward Avro datums (reward.avsc)
    rejected: list[Rejected] = field(default_factory=list)


def normalise_spans(spans: Iterable[OtlpSpan]) -> Normalised:
    """Span and Reward datums for ``spans``; each span is normalised on its own."""
    out = Normalised()
    resources: dict[int, tuple[str, str, dict[str, str]]] = {}
    for span in spans:
        try:
            _normalise_span(span, out, resources)
        except Exception as e:  # noqa: BLE001 - one bad span must not cost the batch
            out.rejected.append(
                Rejected(f"span {span.name!r} could not be normalised: {e}"[:500], "span", span.span_id)
            )
    return out


def normalise_logs(logs: Iterable[OtlpLogRecord]) -> Normalised:
    """Reward datums for evaluation results among ``logs``; other GenAI log records are rejected with
    the reason (their content belongs to a span), the rest are ignored."""
    out = Normalised()
    for index, log in enumerate(logs):
        ident = f"{log.trace_id}:{log.span_id}" if log.trace_id else f"log:{index}"
        try:
            _normalise_log(log, ident, out)
        except Exception as e:  # noqa: BLE001
            out.rejected.append(Rejected(f"log record could not be normalised: {e}"[:500], "log", ident))
    return out


# --- spans ---------------------------------------------------------------------------------------------
# Detection runs for every span of the receiver's hot path: key sets are intersected in C, and the
# prefix detectors only look at the few keys that start with any detector prefix at all.
_KEYS = {d.name: frozenset(d.keys) for d in t.DIALECTS}
_NAMES = {d.name: frozenset(d.span_names) for d in t.DIALECTS}
_PREFIXES = tuple(p for d in t.DIALECTS for p in d.prefixes)
_RENAME_SOURCES = {src: (canonical, i) for canonical, srcs in t.RENAMES.items() for i, src in enumerate(srcs)}
_MODEL_KEYS = frozenset(t.MODEL_KEYS)
_ID_KEYS = frozenset(t.ROLLOUT_ID_KEYS + t.ATTEMPT_ID_KEYS)
_TOKEN_KEYS = frozenset(t.PROMPT_TOKEN_IDS + t.RESPONSE_TOKEN_IDS + t.RESPONSE_LOGPROBS)
_JUDGE_KEYS = frozenset(t.JUDGE_KEYS)


def dialect_of(span: OtlpSpan) -> t.Dialect:
    """The first dialect of the table whose detectors match ``span``, else ``UNKNOWN``."""
    return _dialect(span, [k for k in span.attributes if k.startswith(_PREFIXES)])


#: per dialect, in order: (dialect, resource values, span names, keys, prefixes), unpacked once
_DETECTORS = tuple((d, d.resource_values, _NAMES[d.name], _KEYS[d.name], d.prefixes) for d in t.DIALECTS)


def _dialect(span: OtlpSpan, prefixed: list[str]) -> t.Dialect:
    keys = span.attributes.keys()
    name, resource = span.name, span.resource
    for dialect, resource_values, names, detector_keys, prefixes in _DETECTORS:
        if resource_values and resource:
            for key, value in resource_values:
                if resource.get(key) == value:
                    return dialect
        if name in names or not keys.isdisjoint(detector_keys):
            return dialect
        if prefixed and prefixes:
            for key in prefixed:
                if key.startswith(prefixes):
                    return dialect
    return t.UNKNOWN


def _kind(dialect: t.Dialect, attributes: Mapping[str, Any]) -> str | None:
    for key, kinds in dialect.kind_rules:
        value = attributes.get(key)
        if isinstance(value, str) and value.lower() in kinds:
            return kinds[value.lower()]
    return dialect.default_kind


def _renamed(span_attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes (``None`` values dropped) with old and vendor names copied onto the canonical
    ones where those are absent (the first source in the table's order wins)."""
    attributes = {k: v for k, v in span_attributes.items() if v is not None}
    hits = attributes.keys() & _RENAME_SOURCES.keys()
    for source in sorted(hits, key=lambda k: _RENAME_SOURCES[k][1]):
        attributes.setdefault(_RENAME_SOURCES[source][0], attributes[source])
    return attributes


def _normalise_span(
    span: OtlpSpan, out: Normalised, resources: dict[int, tuple[str, str, dict[str, str]]]
) -> None:
    prefixed = [k for k in span.attributes if k.startswith(_PREFIXES)]
    dialect = _dialect(span, prefixed)
    attributes = _renamed(span.attributes)
    reward_span = (
        prefixed or span.name in t.AGL_OLD_REWARD_SPANS or t.AGENTOPS_OUTPUT_KEYS[0] in attributes
    ) and (is_reward_span(span, attributes))
    kind = t.REWARD if reward_span else _kind(dialect, attributes)
    looks_llm = kind == t.LLM or (kind is None and not _MODEL_KEYS.isdisjoint(attributes.keys()))
    if looks_llm:
        if (dialect.otel_messages or dialect is t.UNKNOWN) and verbatim(attributes):
            kind = t.LLM  # canonical OTel JSON already: stored as it came
            attributes.setdefault(genai.OUTPUT_MESSAGES, "[]")
        elif inputs_outputs := _messages(dialect, span, attributes):
            kind = t.LLM
            attributes[genai.INPUT_MESSAGES] = to_json(inputs_outputs[0])
            attributes[genai.OUTPUT_MESSAGES] = to_json(inputs_outputs[1])
        else:
            kind = t.OTHER
            attributes[genai.NO_CALL_REASON] = (
                f"LLM span of dialect {dialect.name!r} without input messages "
                "(is message content capture off in the instrumentation?)"
            )
        if kind == t.LLM and not _JUDGE_KEYS.isdisjoint(attributes.keys()) and _judge(attributes):
            attributes[genai.JUDGE] = True
    elif kind is None:
        kind = t.AGENT if dialect is not t.UNKNOWN and span.parent_span_id is None else t.OTHER
    if kind == t.TOOL:
        for canonical, sources in t.TOOL_FIELDS.items():
            if canonical not in attributes:
                value = first(attributes, sources)
                if value is not None:
                    attributes[canonical] = value if isinstance(value, str) else to_json(value)
        attributes.setdefault(genai.OPERATION_NAME, genai.OPERATION_EXECUTE_TOOL)
    attributes[genai.DIALECT] = dialect.name
    # the resource is shared by the spans of one ResourceSpans: its part is worked out once
    resource = resources.get(id(span.resource))
    if resource is None:
        resource = resources[id(span.resource)] = (
            first(span.resource, t.ROLLOUT_ID_KEYS) or "",
            first(span.resource, t.ATTEMPT_ID_KEYS) or "",
            strings(span.resource),
        )
    rollout_id, attempt_id = str(resource[0] or span.trace_id), str(resource[1])
    if not _ID_KEYS.isdisjoint(span.attributes.keys()):  # span attributes come before the resource
        rollout_id = str(first(span.attributes, t.ROLLOUT_ID_KEYS) or rollout_id)
        attempt_id = str(first(span.attributes, t.ATTEMPT_ID_KEYS) or attempt_id)
    resource_name, resource_version = _resource(attributes)
    tokens = kind == t.LLM and not _TOKEN_KEYS.isdisjoint(attributes.keys())
    datum = {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "rollout_id": rollout_id,
        "attempt_id": attempt_id,
        "sequence_id": 0,
        "name": span.name,
        "kind": kind,
        "start_time": span.start_ns // 1000,
        "end_time": span.end_ns // 1000,
        "status": _STATUS[span.status_code] if 0 <= span.status_code < 3 else "unset",
        "error": (span.status_message or "error") if span.status_code == 2 else None,
        **typed_maps(attributes),
        "events": [
            {"name": e.name, "time": e.time_ns // 1000, "attributes": strings(e.attributes)}
            for e in span.events
        ],
        "resource_attributes": resource[2],
        "resource_name": resource_name,
        "resource_version": resource_version,
        "response_logprobs": floats(first(attributes, t.RESPONSE_LOGPROBS)) if tokens else [],
        "prompt_token_ids": int32s(first(attributes, t.PROMPT_TOKEN_IDS)) if tokens else [],
        "response_token_ids": int32s(first(attributes, t.RESPONSE_TOKEN_IDS)) if tokens else [],
    }
    bad = _bad_time(datum)
    if bad is not None:
        out.rejected.append(Rejected(f"span {span.name!r}: {bad}", "span", span.span_id))
        return
    out.spans.append(datum)
    if kind == t.LLM and not span.events:
        return  # an LLM call carries rewards only in evaluation events
    for reward in span_rewards(span, attributes, kind, rollout_id, attempt_id):
        reward["attributes"][genai.DIALECT] = dialect.name
        try:
            validate("reward", reward)
        except InvalidRecordError as e:
            out.rejected.append(Rejected(f"reward of span {span.name!r}: {e}", "span", span.span_id))
            continue
        out.rewards.append(reward)


def _judge(attributes: Mapping[str, Any]) -> bool:
    return truthy(attributes.get(t.JUDGE_FLAG)) or bool(attributes.get(t.EVALUATION_NAME))


def _bad_time(datum: Mapping[str, Any]) -> InvalidRecordError | None:
    """The span rules of schemas/validation.py, checked inline for speed: the typed maps hold only
    finite floats and ``floats()`` no NaN already, so the time ranges are what is left to check."""
    for name in ("start_time", "end_time"):
        if not MIN_TIME_US <= datum[name] < MAX_TIME_US:
            return InvalidRecordError("span", name, "must be a time in [1970-01-01, 2200-01-01)", datum[name])
    for event in datum["events"]:
        if not MIN_TIME_US <= event["time"] < MAX_TIME_US:
            return InvalidRecordError(
                "span", "events[].time", "must be a time in [1970, 2200)", event["time"]
            )
    return None


def _messages(
    dialect: t.Dialect, span: OtlpSpan, attributes: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(input, output) messages in the OTel parts schema; ``None`` when there are no input messages."""
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    if dialect.otel_messages or dialect is t.UNKNOWN:
        inputs, outputs = otel_messages(attributes, span.events)
    if not inputs and dialect.indexed is not None:
        inputs, outputs = indexed_messages(attributes, dialect.indexed)
    if not inputs:
        return None
    if genai.SYSTEM_INSTRUCTIONS in attributes and not any(m.get("role") == "system" for m in inputs):
        # The conventions keep system instructions apart; a training prompt needs them in front.
        instructions = parsed(attributes[genai.SYSTEM_INSTRUCTIONS])
        if isinstance(instructions, list) and instructions:
            inputs = [{"role": "system", "parts": instructions}, *inputs]
    return inputs, outputs


def _resource(attributes: Mapping[str, Any]) -> tuple[str, str]:
    """The call's resource: a prompt template (OpenInference) is named by a hash of its text."""
    name = attributes.get("agentstream.resource.name")
    version = attributes.get("agentstream.resource.version")
    if name:
        return str(name), str(version or "")
    template = attributes.get(t.TEMPLATE_TEXT)
    if not template:
        return "", ""
    digest = hashlib.sha1(str(template).encode()).hexdigest()[:12]
    return f"prompt_template:{digest}", str(attributes.get(t.TEMPLATE_VERSION) or "")


# --- logs ----------------------------------------------------------------------------------------------


def _normalise_log(log: OtlpLogRecord, ident: str, out: Normalised) -> None:
    attributes = log.attributes
    body = log.body if isinstance(log.body, Mapping) else {}
    if log.event_name == t.EVALUATION_EVENT or t.EVALUATION_SCORE in attributes:
        fields = {**body, **attributes}
        value = number(fields.get(t.EVALUATION_SCORE))
        if value is None:
            out.rejected.append(
                Rejected(f"evaluation result without a numeric {t.EVALUATION_SCORE}", "log", ident)
            )
            return
        rollout_id, attempt_id = rollout_ids(attributes, log.resource, log.trace_id)
        if not rollout_id:
            out.rejected.append(
                Rejected("evaluation result with no trace id and no rollout id", "log", ident)
            )
            return
        name = str(fields.get(t.EVALUATION_NAME) or "reward")
        key = f"{log.trace_id}/{log.span_id}/{log.time_ns}/{name}/{value!r}"
        reward = {
            "reward_id": "eval-" + hashlib.sha1(key.encode()).hexdigest()[:24],
            "rollout_id": rollout_id,
            "attempt_id": attempt_id,
            "span_id": None,  # the log's span may be an agent step, not a call: no explicit target
            "response_id": str_or_none(fields.get(genai.RESPONSE_ID)),
            "trace_id": log.trace_id or None,
            "parent_span_id": log.span_id or None,
            "sequence_id": 0,
            "name": name,
            "value": value,
            "feedback": str_or_none(fields.get(t.EVALUATION_EXPLANATION)),
            "source": "judge",
            "timestamp": log.time_ns // 1000,
            "attributes": {
                **strings({k: v for k, v in fields.items() if k.startswith("gen_ai.evaluation.")}),
                genai.DIALECT: "otel_genai",
            },
        }
        try:
            validate("reward", reward)
        except InvalidRecordError as e:
            out.rejected.append(Rejected(f"evaluation result: {e}", "log", ident))
            return
        out.rewards.append(reward)
    elif log.event_name in t.SEPARATE_MESSAGE_LOGS:
        out.rejected.append(Rejected(f"{log.event_name}: {t.SEPARATE_MESSAGES_REASON}", "log", ident))
