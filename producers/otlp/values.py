"""Small value helpers shared by the normaliser's modules (attribute values, JSON, ids)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from . import dialect_table as t


def first(mapping: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        value = mapping.get(key)
        if value is not None and value != "":
            return value
    return None


def rollout_ids(attributes: Mapping[str, Any], resource: Mapping[str, Any], trace_id: str) -> tuple[str, str]:
    rollout = first(attributes, t.ROLLOUT_ID_KEYS) or first(resource, t.ROLLOUT_ID_KEYS) or trace_id
    attempt = first(attributes, t.ATTEMPT_ID_KEYS) or first(resource, t.ATTEMPT_ID_KEYS) or ""
    return str(rollout), str(attempt)


def indexed(attributes: Mapping[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    """``{prefix}.{k}.{field}`` attributes as ``{k: {field: value}}``."""
    start = prefix + "."
    found: dict[str, dict[str, Any]] = {}
    for key, value in attributes.items():
        if key.startswith(start):
            index, _, rest = key[len(start) :].partition(".")
            if rest:
                found.setdefault(index, {})[rest] = value
    return found


def index_key(k: str) -> tuple[int, str]:
    return (int(k), "") if k.isdigit() else (1 << 30, k)


def to_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def parsed(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    return raw


def truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def str_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def typed_maps(attributes: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Attributes spread over the Span record's typed maps in one pass (as
    :func:`agentstream.schemas.span.split_attributes` does), made storable on the way: nested maps
    become JSON, non-finite floats their text, non-string array items JSON."""
    strings: dict[str, str] = {}
    ints: dict[str, int] = {}
    floats: dict[str, float] = {}
    bools: dict[str, bool] = {}
    arrays: dict[str, list[str]] = {}
    for key, value in attributes.items():
        kind = type(value)
        if kind is str:
            strings[key] = value
        elif kind is int:
            if -(2**63) <= value < 2**63:
                ints[key] = value
            else:  # beyond an Avro long (JSON files may hold anything)
                strings[key] = str(value)
        elif kind is bool:
            bools[key] = value
        elif kind is float:
            if math.isfinite(value):
                floats[key] = value
            else:
                strings[key] = repr(value)
        elif kind is list:
            arrays[key] = [v if type(v) is str else to_json(v) for v in value]
        elif value is not None:
            strings[key] = to_json(value) if isinstance(value, dict) else str(value)
    return {
        "attributes": strings,
        "int_attributes": ints,
        "float_attributes": floats,
        "bool_attributes": bools,
        "array_attributes": arrays,
    }


def strings(mapping: Mapping[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else to_json(v) for k, v in mapping.items() if v is not None}


def int32s(raw: Any) -> list[int]:
    values = parsed(raw)
    if not isinstance(values, list):
        return []
    try:
        ids = [int(v) for v in values]
    except (TypeError, ValueError):
        return []
    return ids if all(-(2**31) <= v < 2**31 for v in ids) else []


def floats(raw: Any) -> list[float]:
    # All or nothing: a logprob list with a gap would no longer line up with the response tokens.
    values = parsed(raw)
    if not isinstance(values, list):
        return []
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        return []
    return [] if any(v != v for v in floats) else floats
