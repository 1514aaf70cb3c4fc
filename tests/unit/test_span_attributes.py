"""Bad attribute values never raise into the agent's code: each is coerced or dropped, with a
warning, and the span still encodes for its topic."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from agentstream.producers import warn_once
from agentstream.producers.attributes import attribute_value, to_json
from agentstream.producers.client import _finite
from agentstream.producers.records import RecordEncoder
from agentstream.producers.tracer import ActiveSpan
from agentstream.schemas import AvroDeserializer, load_schema
from agentstream.settings import Settings
from tests.helpers import RecordingEmitter


class _Unshowable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warn_once, "_seen", set())


def test_values_json_cannot_hold_become_strings() -> None:
    circular: dict[str, Any] = {"name": "loop"}
    circular["self"] = circular
    assert to_json(circular) == "\"{'name': 'loop', 'self': {...}}\""
    assert to_json({"big": 10**400}) == '{"big":1' + "0" * 400 + "}"
    assert to_json(_Unshowable()) == '"<_Unshowable that cannot be shown>"'
    assert to_json({"a": [1, {"b": 1.5}]}) == '{"a":[1,{"b":1.5}]}'


def test_an_int_beyond_64_bits_is_kept_as_its_digits(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agentstream.producers.tracer")
    assert attribute_value("n", 2**70) == str(2**70)
    assert attribute_value("m", -(2**63)) == -(2**63)  # still a long
    assert attribute_value("n", 2**64) == str(2**64)
    levels = [r.levelno for r in caplog.records if "beyond 64 bits" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]  # once, then quietly


def test_a_span_with_bad_attributes_still_encodes(caplog: pytest.LogCaptureFixture) -> None:
    circular: list[Any] = []
    circular.append(circular)
    emitter = RecordingEmitter()
    span = ActiveSpan(emitter, "tool", "tool", None, None, None)
    span.set_attribute("huge", 2**70)
    span.set_attribute("circular", {"items": circular})
    span.set_attribute("unshowable", _Unshowable())
    span.set_attributes({"ok": 1, "too_big": 10**400, "nothing": None})
    assert span.attributes["huge"] == str(2**70) and span.attributes["too_big"] == str(10**400)
    assert span.attributes["ok"] == 1 and "nothing" not in span.attributes
    encoder = RecordEncoder(Settings(bootstrap_servers="127.0.0.1:1"), {})
    record = encoder.span(span)
    decoded = AvroDeserializer(load_schema("span"))(record.value)
    assert decoded["attributes"]["huge"] == str(2**70)
    assert decoded["int_attributes"] == {"ok": 1}


def test_a_reward_too_large_for_a_float_is_not_finite() -> None:
    assert not _finite(10**400)
    assert _finite(3) and _finite(0.5) and not _finite(float("nan"))
