"""OTLP trace and log payloads -> a neutral, protobuf-free form (:class:`OtlpSpan`, :class:`OtlpLogRecord`).

Two wire formats arrive: OTLP protobuf (already parsed into ``opentelemetry-proto`` messages by the
receiver) and OTLP/JSON. Both decode into the same dataclasses, which the dialect normaliser
(:mod:`.dialects`) maps onto agentstream's Span and Reward records.

This is the hot path of the receiver, so it walks the proto fields directly (``WhichOneof`` on each
``AnyValue``) instead of going through ``json_format``. OTLP/JSON is parsed with orjson straight into
the neutral form: its trace and span ids are hex strings, which ``json_format.Parse`` would read as
base64 and corrupt.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = [
    "OtlpDecodeError",
    "OtlpEvent",
    "OtlpLogRecord",
    "OtlpSpan",
    "logs_from_json",
    "logs_from_proto",
    "spans_from_json",
    "spans_from_proto",
]


class OtlpDecodeError(ValueError):
    """A malformed OTLP payload; the message says what is wrong."""


@dataclass(slots=True)
class OtlpEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(slots=True)
class OtlpSpan:
    """One OTLP span. Attribute values are flattened: str/int/float/bool, arrays -> list,
    key-value lists -> dict, bytes -> hex str."""

    trace_id: str  # 32 lowercase hex chars
    span_id: str  # 16 lowercase hex chars
    parent_span_id: str | None
    name: str
    kind: int  # OTLP SpanKind number
    start_ns: int
    end_ns: int
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    attributes: dict[str, Any]
    events: list[OtlpEvent]
    resource: dict[str, Any]
    scope_name: str = ""
    scope_version: str = ""


@dataclass(slots=True)
class OtlpLogRecord:
    """One OTLP log record (attributes flattened as for :class:`OtlpSpan`)."""

    time_ns: int  # time_unix_nano, else observed_time_unix_nano
    trace_id: str  # "" when absent
    span_id: str  # "" when absent
    event_name: str  # event_name field, else the "event.name" attribute, else ""
    body: Any
    attributes: dict[str, Any]
    resource: dict[str, Any] = field(default_factory=dict)
    severity_text: str = ""


# --- protobuf ------------------------------------------------------------------------------------------


def _any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return None


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in pairs:
        value = kv.value
        kind = value.WhichOneof("value")
        # the scalar kinds inline: this loop runs for every attribute the receiver sees
        if kind == "string_value":
            out[kv.key] = value.string_value
        elif kind == "int_value":
            out[kv.key] = value.int_value
        elif kind == "double_value":
            out[kv.key] = value.double_value
        elif kind == "bool_value":
            out[kv.key] = value.bool_value
        else:
            out[kv.key] = _any_value(value)
    return out


def spans_from_proto(request: ExportTraceServiceRequest) -> list[OtlpSpan]:
    """Every span of an OTLP ``ExportTraceServiceRequest``, with its resource and scope."""
    out: list[OtlpSpan] = []
    append = out.append
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            scope_name, scope_version = scope.name, scope.version
            for span in scope_spans.spans:
                if len(span.trace_id) != 16 or len(span.span_id) != 8:
                    raise OtlpDecodeError(
                        f"span {span.name!r}: trace_id must be 16 bytes and span_id 8 bytes "
                        f"(got {len(span.trace_id)} and {len(span.span_id)})"
                    )
                parent = span.parent_span_id
                append(
                    OtlpSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=parent.hex() if parent else None,
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status_code=span.status.code,
                        status_message=span.status.message,
                        attributes=_attributes(span.attributes),
                        events=[
                            OtlpEvent(e.name, e.time_unix_nano, _attributes(e.attributes))
                            for e in span.events
                        ],
                        resource=resource,
                        scope_name=scope_name,
                        scope_version=scope_version,
                    )
                )
    return out


def logs_from_proto(request: ExportLogsServiceRequest) -> list[OtlpLogRecord]:
    """Every log record of an OTLP ``ExportLogsServiceRequest``, with its resource."""
    out: list[OtlpLogRecord] = []
    for resource_logs in request.resource_logs:
        resource = _attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = _attributes(record.attributes)
                event_name = getattr(record, "event_name", "") or attributes.get("event.name") or ""
                out.append(
                    OtlpLogRecord(
                        time_ns=record.time_unix_nano or record.observed_time_unix_nano,
                        trace_id=record.trace_id.hex(),
                        span_id=record.span_id.hex(),
                        event_name=str(event_name),
                        body=_any_value(record.body) if record.HasField("body") else None,
                        attributes=attributes,
                        resource=resource,
                        severity_text=record.severity_text,
                    )
                )
    return out


# --- OTLP/JSON -----------------------------------------------------------------------------------------
# The protobuf JSON mapping: lowerCamelCase keys (parsers also accept the proto names), int64 as
# strings (or numbers), enums as ints (or their names); OTLP overrides ids as hex, not base64.

_SPAN_KINDS = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _get(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _load(data: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise OtlpDecodeError(f"not valid JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise OtlpDecodeError(f"an OTLP/JSON request must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _int(value: Any, what: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise OtlpDecodeError(f"{what} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise OtlpDecodeError(f"{what} must be an integer, got {value!r}") from None


def _enum(value: Any, names: Mapping[str, int], what: str) -> int:
    if isinstance(value, str) and value in names:
        return names[value]
    return _int(value, what)


def _hex_id(value: Any, length: int, what: str, *, required: bool) -> str:
    if not value:
        if required:
            raise OtlpDecodeError(f"{what} is missing")
        return ""
    if not isinstance(value, str) or len(value) != length:
        raise OtlpDecodeError(f"{what} must be {length} hex characters, got {value!r}")
    try:
        int(value, 16)
    except ValueError:
        raise OtlpDecodeError(f"{what} must be {length} hex characters, got {value!r}") from None
    return value.lower()


def _json_value(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return None
    for key, item in value.items():
        if key in ("stringValue", "string_value"):
            return item
        if key in ("intValue", "int_value"):
            return _int(item, "intValue")
        if key in ("doubleValue", "double_value"):
            return float(item)  # also "NaN", "Infinity", "-Infinity" (the JSON mapping's strings)
        if key in ("boolValue", "bool_value"):
            return bool(item)
        if key in ("arrayValue", "array_value"):
            return [_json_value(v) for v in (item or {}).get("values") or ()]
        if key in ("kvlistValue", "kvlist_value"):
            return _json_attributes((item or {}).get("values"))
        if key in ("bytesValue", "bytes_value"):
            try:
                return base64.b64decode(item).hex()
            except (binascii.Error, TypeError):
                raise OtlpDecodeError(f"bytesValue must be base64, got {item!r}") from None
    return None


def _json_attributes(pairs: Any) -> dict[str, Any]:
    if not pairs:
        return {}
    if not isinstance(pairs, list):
        raise OtlpDecodeError(f"attributes must be a list of key-value objects, got {pairs!r:.80}")
    out: dict[str, Any] = {}
    for kv in pairs:
        if not isinstance(kv, Mapping) or not isinstance(kv.get("key"), str):
            raise OtlpDecodeError(f"an attribute must be an object with a string key, got {kv!r:.80}")
        out[kv["key"]] = _json_value(kv.get("value"))
    return out


def _list(obj: Mapping[str, Any], camel: str, snake: str) -> list[Any]:
    value = _get(obj, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise OtlpDecodeError(f"{camel} must be a list, got {type(value).__name__}")
    return value


def spans_from_json(data: bytes | str | Mapping[str, Any]) -> list[OtlpSpan]:
    """Every span of an OTLP/JSON ``ExportTraceServiceRequest`` (hex ids, camelCase keys)."""
    request = _load(data)
    try:
        return _spans(request)
    except (AttributeError, TypeError, ValueError) as e:  # a field of the wrong JSON type
        if isinstance(e, OtlpDecodeError):
            raise
        raise OtlpDecodeError(f"malformed OTLP/JSON trace request: {e}") from e


def _spans(request: Mapping[str, Any]) -> list[OtlpSpan]:
    out: list[OtlpSpan] = []
    for resource_spans in _list(request, "resourceSpans", "resource_spans"):
        resource = _json_attributes((resource_spans.get("resource") or {}).get("attributes"))
        scopes = _list(resource_spans, "scopeSpans", "scope_spans") or _list(
            resource_spans, "instrumentationLibrarySpans", "instrumentation_library_spans"
        )
        for scope_spans in scopes:
            scope = scope_spans.get("scope") or scope_spans.get("instrumentationLibrary") or {}
            scope_name, scope_version = str(scope.get("name") or ""), str(scope.get("version") or "")
            for span in _list(scope_spans, "spans", "spans"):
                out.append(_json_span(span, resource, scope_name, scope_version))
    return out


def _json_span(span: Mapping[str, Any], resource: dict[str, Any], scope: str, version: str) -> OtlpSpan:
    name = str(span.get("name") or "")
    what = f"span {name!r}"
    status = span.get("status") or {}
    parent = _hex_id(_get(span, "parentSpanId", "parent_span_id"), 16, f"{what} parentSpanId", required=False)
    return OtlpSpan(
        trace_id=_hex_id(_get(span, "traceId", "trace_id"), 32, f"{what} traceId", required=True),
        span_id=_hex_id(_get(span, "spanId", "span_id"), 16, f"{what} spanId", required=True),
        parent_span_id=parent or None,
        name=name,
        kind=_enum(span.get("kind"), _SPAN_KINDS, f"{what} kind"),
        start_ns=_int(_get(span, "startTimeUnixNano", "start_time_unix_nano"), f"{what} startTimeUnixNano"),
        end_ns=_int(_get(span, "endTimeUnixNano", "end_time_unix_nano"), f"{what} endTimeUnixNano"),
        status_code=_enum(status.get("code"), _STATUS_CODES, f"{what} status.code"),
        status_message=str(status.get("message") or ""),
        attributes=_json_attributes(span.get("attributes")),
        events=[
            OtlpEvent(
                str(e.get("name") or ""),
                _int(_get(e, "timeUnixNano", "time_unix_nano"), f"{what} event time"),
                _json_attributes(e.get("attributes")),
            )
            for e in _list(span, "events", "events")
        ],
        resource=resource,
        scope_name=scope,
        scope_version=version,
    )


def logs_from_json(data: bytes | str | Mapping[str, Any]) -> list[OtlpLogRecord]:
    """Every log record of an OTLP/JSON ``ExportLogsServiceRequest``."""
    request = _load(data)
    try:
        return _logs(request)
    except (AttributeError, TypeError, ValueError) as e:  # a field of the wrong JSON type
        if isinstance(e, OtlpDecodeError):
            raise
        raise OtlpDecodeError(f"malformed OTLP/JSON logs request: {e}") from e


def _logs(request: Mapping[str, Any]) -> list[OtlpLogRecord]:
    out: list[OtlpLogRecord] = []
    for resource_logs in _list(request, "resourceLogs", "resource_logs"):
        resource = _json_attributes((resource_logs.get("resource") or {}).get("attributes"))
        scopes = _list(resource_logs, "scopeLogs", "scope_logs") or _list(
            resource_logs, "instrumentationLibraryLogs", "instrumentation_library_logs"
        )
        for scope_logs in scopes:
            for record in _list(scope_logs, "logRecords", "log_records"):
                attributes = _json_attributes(record.get("attributes"))
                time_ns = _int(_get(record, "timeUnixNano", "time_unix_nano"), "log timeUnixNano")
                if not time_ns:
                    observed = _get(record, "observedTimeUnixNano", "observed_time_unix_nano")
                    time_ns = _int(observed, "log observedTimeUnixNano")
                event_name = _get(record, "eventName", "event_name") or attributes.get("event.name") or ""
                out.append(
                    OtlpLogRecord(
                        time_ns=time_ns,
                        trace_id=_hex_id(
                            _get(record, "traceId", "trace_id"), 32, "log traceId", required=False
                        ),
                        span_id=_hex_id(_get(record, "spanId", "span_id"), 16, "log spanId", required=False),
                        event_name=str(event_name),
                        body=_json_value(record.get("body")),
                        attributes=attributes,
                        resource=resource,
                        severity_text=str(_get(record, "severityText", "severity_text") or ""),
                    )
                )
    return out
