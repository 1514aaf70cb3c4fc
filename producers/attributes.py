"""Attribute values as a span can hold them: scalars, lists of strings, or a JSON snapshot.

Nothing here raises into the agent's code: a value that cannot be kept as it is gets coerced (an
int beyond the 64 bits of an Avro ``long`` becomes its digits; a circular structure, its
``repr``) or dropped, with a warning that names the attribute.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson

from .warn_once import warn_once

logger = logging.getLogger("agentstream.producers.tracer")

#: the range of an Avro ``long``, where int attributes go
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def attribute_value(key: str, value: Any) -> Any:
    """What a span keeps for the attribute ``key`` set to ``value``; ``None`` keeps nothing."""
    if value is None:
        return None
    try:
        if isinstance(value, int) and not isinstance(value, bool) and not _INT64_MIN <= value <= _INT64_MAX:
            warn_once(
                logger,
                "attribute: int beyond 64 bits",
                "agentstream: attribute %r is an int beyond 64 bits; it is recorded as a string.",
                key,
            )
            return str(value)
        if isinstance(value, (str, bool, int, float)):
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            return [v if isinstance(v, str) else _scalar_str(v) for v in value]
        return to_json(value)  # snapshot now: the caller may mutate it later
    except Exception as e:  # never into the agent's code
        warn_once(
            logger,
            f"attribute: {type(e).__name__}",
            "agentstream: attribute %r dropped: %s: %s",
            key,
            type(e).__name__,
            e,
        )
        return None


def _scalar_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_json(value: Any) -> str:
    """``value`` as compact JSON (non-string keys allowed; what JSON cannot hold as its ``repr``).

    Never raises: a value orjson refuses whole (a circular or too deeply nested structure, an int
    beyond 64 bits) goes through the standard library's encoder, and failing that becomes the JSON
    string of its ``repr``.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        pass
    try:
        return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        pass
    try:
        return json.dumps(value, default=repr, separators=(",", ":"))
    except Exception:  # circular, too deep, or a __repr__ that raises
        pass
    try:
        return orjson.dumps(repr(value)).decode()
    except Exception:
        return orjson.dumps(f"<{type(value).__name__} that cannot be shown>").decode()
