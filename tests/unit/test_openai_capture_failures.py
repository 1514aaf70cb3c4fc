"""A capture failure never reaches the agent's code, and is reported once: a WARNING with the
reason the first time at each place, DEBUG after that."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import httpx2
import openai
import pytest

from agentstream.producers import warn_once
from agentstream.producers.openai import instrument_openai, uninstrument_openai
from agentstream.producers.openai.failures import capture_failed
from agentstream.producers.tracer import ActiveSpan, Rollout

LOGGER = "agentstream.producers.openai"
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1_732_000_000,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
}


class _BrokenEmitter:
    """An emitter that cannot open spans (as a bug in agentstream would make it)."""

    def __init__(self) -> None:
        self.spans: list[ActiveSpan] = []

    def span(
        self,
        name: str,
        *,
        kind: str = "other",
        attributes: Mapping[str, Any] | None = None,
        rollout: Rollout | None = None,
    ) -> ActiveSpan:
        raise RuntimeError("span store is full")

    def emit_span(self, span: ActiveSpan) -> None:
        self.spans.append(span)

    def emit_reward(self, value: float, *args: Any, **kwargs: Any) -> str:
        return ""

    def rollout_started(self, rollout: Rollout) -> None: ...

    def rollout_finished(self, rollout: Rollout) -> None: ...


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(warn_once, "_seen", set())
    yield
    uninstrument_openai()


def _records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_each_kind_of_failure_warns_once_then_logs_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    failures_seen = [
        ("cannot record an OpenAI response", "no choices"),
        ("cannot record an OpenAI response", "no choices again"),
        ("cannot end the span of an OpenAI call", "span closed"),
    ]
    for what, reason in failures_seen:
        try:
            raise ValueError(reason)
        except ValueError:
            capture_failed(what)

    records = _records(caplog)
    assert [level for level, _ in records] == [logging.WARNING, logging.DEBUG, logging.WARNING]
    first, repeat, other = (message for _, message in records)
    assert "cannot record an OpenAI response" in first and "ValueError: no choices" in first
    assert "logged at DEBUG" in first
    assert "cannot record an OpenAI response" in repeat and "no choices again" in repeat
    assert "cannot end the span of an OpenAI call" in other and "ValueError: span closed" in other


def test_a_failed_capture_warns_once_and_the_call_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://llm.internal/v1",
        max_retries=0,
        http_client=httpx2.Client(
            transport=httpx2.MockTransport(lambda _: httpx2.Response(200, json=COMPLETION))
        ),
    )
    instrument_openai(client)
    emitter = _BrokenEmitter()

    with Rollout(emitter, "t", lifecycle_events=False):
        answers = [
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
            for _ in range(3)
        ]

    assert [a.choices[0].message.content for a in answers] == ["hi", "hi", "hi"]
    records = _records(caplog)
    assert [level for level, _ in records] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "cannot start the span of an OpenAI call" in records[0][1]
    assert "RuntimeError: span store is full" in records[0][1]
    assert [s.name for s in emitter.spans] == ["rollout"]  # no LLM span: none could be opened
