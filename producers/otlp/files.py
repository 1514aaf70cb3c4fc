"""Readers of exported traces: OTLP JSON files and Agent Lightning span dumps, into the neutral form.

Accepted files (the kind is detected per JSON value, so one file may mix them):

* OTLP JSON: one ``ExportTraceServiceRequest`` / ``ExportLogsServiceRequest`` JSON object per line
  (the OpenTelemetry Collector's file exporter), or one such object in the whole file;
* Agent Lightning span dumps: a JSON list, or JSON lines, of AGL ``Span`` objects (``rollout_id``,
  ``attempt_id``, ``sequence_id``, ``trace_id``, ``span_id``, ``parent_id``, ``name``, ``status``,
  ``attributes``, ``events``, ``start_time`` / ``end_time`` in float seconds, ``resource``).

Ids and timestamps are kept as the files give them (AGL's float seconds are read to the
microsecond, the precision of a double at today's epoch). A value that cannot be read becomes a
:class:`FileBatch` with an ``error``, and reading goes on with the next one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .decode import OtlpDecodeError, OtlpEvent, OtlpLogRecord, OtlpSpan, logs_from_json, spans_from_json

__all__ = ["FileBatch", "agl_span", "read_file"]

#: AGL spans read into one batch (AGL dumps list spans one by one)
AGL_BATCH = 512

_AGL_STATUS = {"UNSET": 0, "OK": 1, "ERROR": 2}
_SPAN_KINDS = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}


@dataclass(slots=True)
class FileBatch:
    """What one JSON value (or a run of AGL spans) of a file held."""

    path: str
    line: int  # 1-based line of the value (1 for a whole-file value)
    spans: list[OtlpSpan] = field(default_factory=list)
    logs: list[OtlpLogRecord] = field(default_factory=list)
    error: str | None = None  # why this value could not be read
    size: int = 0  # bytes of input it came from (for progress)


def read_file(path: str | Path) -> Iterator[FileBatch]:
    """The batches of one file, in file order. Raises ``OSError`` when the file cannot be read."""
    path = Path(path)
    data = path.read_bytes()
    name = str(path)
    try:
        whole = orjson.loads(data)
    except orjson.JSONDecodeError:
        whole = None
    else:
        if isinstance(whole, list) and all(_is_agl(v) for v in whole):
            yield from _agl_batches(name, 1, whole, len(data))
        elif isinstance(whole, list):  # a list of OTLP requests
            for value in whole:
                yield _value_batch(name, 1, value, len(data) // max(1, len(whole)))
        else:
            yield _value_batch(name, 1, whole, len(data))
        return
    # JSON lines
    pending: list[tuple[int, Any]] = []
    pending_size = 0
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            yield from _agl_batches(
                name, pending[0][0] if pending else number, [v for _, v in pending], pending_size
            )
            pending, pending_size = [], 0
            yield FileBatch(name, number, error=f"not valid JSON: {e}", size=len(line) + 1)
            continue
        if _is_agl(value):  # AGL spans are grouped into batches
            pending.append((number, value))
            pending_size += len(line) + 1
            if len(pending) >= AGL_BATCH:
                yield from _agl_batches(name, pending[0][0], [v for _, v in pending], pending_size)
                pending, pending_size = [], 0
            continue
        yield _value_batch(name, number, value, len(line) + 1)
    if pending:
        yield from _agl_batches(name, pending[0][0], [v for _, v in pending], pending_size)


def _is_agl(value: Any) -> bool:
    return isinstance(value, dict) and "span_id" in value and "resourceSpans" not in value


def _value_batch(name: str, line: int, value: Any, size: int) -> FileBatch:
    batch = FileBatch(name, line, size=size)
    if not isinstance(value, dict):
        batch.error = f"expected a JSON object, got {type(value).__name__}"
        return batch
    try:
        if "resourceSpans" in value or "resource_spans" in value:
            batch.spans = spans_from_json(value)
        elif "resourceLogs" in value or "resource_logs" in value:
            batch.logs = logs_from_json(value)
        elif _is_agl(value):
            batch.spans = [agl_span(value)]
        else:
            batch.error = "neither an OTLP trace or logs request nor an Agent Lightning span"
    except OtlpDecodeError as e:
        batch.error = str(e)
    return batch


def _agl_batches(name: str, line: int, values: list[Any], size: int) -> Iterator[FileBatch]:
    if not values:
        return
    for start in range(0, len(values), AGL_BATCH):
        chunk = values[start : start + AGL_BATCH]
        batch = FileBatch(name, line, size=size * len(chunk) // len(values))
        errors: list[str] = []
        for value in chunk:
            try:
                batch.spans.append(agl_span(value))
            except OtlpDecodeError as e:
                errors.append(str(e))
        if errors:
            batch.error = f"{len(errors)} Agent Lightning span(s) unreadable, first: {errors[0]}"
        yield batch


def _seconds_to_ns(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OtlpDecodeError(f"{what} must be a number of seconds, got {value!r}")
    if value > 1e12:  # already nanoseconds (AGL converts only what looks like seconds)
        return int(value)
    return round(value * 1_000_000) * 1000


def _hex(value: Any, length: int, what: str) -> str:
    text = str(value or "").lower().removeprefix("0x")
    if len(text) != length or any(c not in "0123456789abcdef" for c in text):
        raise OtlpDecodeError(f"{what} must be {length} hex characters, got {value!r}")
    return text


def agl_span(value: Mapping[str, Any]) -> OtlpSpan:
    """One Agent Lightning ``Span`` dict as an :class:`OtlpSpan`; its rollout and attempt ids go into
    the resource attributes (``agentlightning.rollout_id`` / ``agentlightning.attempt_id``) unless
    the resource names them already."""
    if not isinstance(value, Mapping):
        raise OtlpDecodeError(f"an Agent Lightning span must be an object, got {type(value).__name__}")
    name = str(value.get("name") or "")
    what = f"Agent Lightning span {name!r}"
    status = value.get("status") or {}
    code = status.get("status_code", "UNSET") if isinstance(status, Mapping) else "UNSET"
    resource_value = value.get("resource") or {}
    resource = dict(resource_value.get("attributes") or {}) if isinstance(resource_value, Mapping) else {}
    for key in ("rollout_id", "attempt_id"):
        if value.get(key):
            resource.setdefault(f"agentlightning.{key}", str(value[key]))
    attributes = value.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise OtlpDecodeError(f"{what}: attributes must be an object")
    events = []
    for event in value.get("events") or ():
        if not isinstance(event, Mapping):
            raise OtlpDecodeError(f"{what}: an event must be an object")
        events.append(
            OtlpEvent(
                str(event.get("name") or ""),
                _seconds_to_ns(event.get("timestamp"), f"{what} event timestamp"),
                dict(event.get("attributes") or {}),
            )
        )
    kind = str(value.get("kind") or "").rsplit(".", 1)[-1].upper()
    parent = value.get("parent_id")
    return OtlpSpan(
        trace_id=_hex(value.get("trace_id"), 32, f"{what} trace_id"),
        span_id=_hex(value.get("span_id"), 16, f"{what} span_id"),
        parent_span_id=_hex(parent, 16, f"{what} parent_id") if parent else None,
        name=name,
        kind=_SPAN_KINDS.get(kind, 0),
        start_ns=_seconds_to_ns(value.get("start_time"), f"{what} start_time"),
        end_ns=_seconds_to_ns(value.get("end_time"), f"{what} end_time"),
        status_code=_AGL_STATUS.get(str(code).upper(), 0),
        status_message=str(status.get("description") or "") if isinstance(status, Mapping) else "",
        attributes=dict(attributes),
        events=events,
        resource=resource,
    )
