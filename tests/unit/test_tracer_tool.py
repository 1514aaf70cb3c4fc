"""``@traced(kind="tool")`` records the OTel GenAI ``execute_tool`` span, and an LLM call made inside a
reward or evaluation span is marked a judge's call (issue 14, items 3b and 4)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from agentstream.producers import sdk
from agentstream.producers.tracer import ActiveSpan, Rollout, open_span
from agentstream.schemas import genai


class Emitter:
    """A test double of the tracer's ``Emitter``: spans nest as the SDK's do; it keeps what ends."""

    def __init__(self, capture_content: bool = True) -> None:
        self.settings = SimpleNamespace(sdk=SimpleNamespace(capture_content=capture_content))
        self.spans: list[ActiveSpan] = []

    def span(
        self,
        name: str,
        *,
        kind: str = "other",
        attributes: Mapping[str, Any] | None = None,
        rollout: Rollout | None = None,
    ) -> ActiveSpan:
        return open_span(self, name, kind=kind, attributes=attributes, rollout=rollout)

    def emit_span(self, span: ActiveSpan) -> None:
        self.spans.append(span)

    def emit_reward(self, value: float, *args: Any, **kwargs: Any) -> str:
        return ""

    def rollout_started(self, rollout: Rollout) -> None:
        pass

    def rollout_finished(self, rollout: Rollout) -> None:
        pass

    def named(self, name: str) -> ActiveSpan:
        [span] = [s for s in self.spans if s.name == name]
        return span


class Shop:
    @sdk.traced(kind="tool")
    def lookup_order(self, order_id: str, tool_call_id: str = "", verbose: bool = False) -> dict[str, Any]:
        return {"order": order_id, "status": "shipped"}


@sdk.traced(name="refund", kind="tool")
async def refund_order(order_id: str, amount: float) -> str:
    await asyncio.sleep(0)
    return f"refunded {amount} on {order_id}"


@sdk.traced(kind="tool")
def create_ticket(queue: str | None, ticket: str) -> None:
    raise ValueError("queue must be one of billing, shipping")


@sdk.traced(kind="tool")
def echo(value: Any) -> Any:
    return value


def test_a_traced_tool_is_an_execute_tool_span() -> None:
    emitter = Emitter()
    with Rollout(emitter, lifecycle_events=False):
        assert Shop().lookup_order("A-17", tool_call_id="call_1") == {"order": "A-17", "status": "shipped"}
        assert asyncio.run(refund_order("A-17", amount=9.5)) == "refunded 9.5 on A-17"
    lookup = emitter.named("execute_tool lookup_order")
    assert lookup.kind == "tool" and lookup.status == "ok"
    attributes = lookup.attributes
    assert attributes[genai.OPERATION_NAME] == "execute_tool"
    assert attributes[genai.TOOL_NAME] == "lookup_order"
    assert attributes[genai.TOOL_CALL_ID] == "call_1"
    # the bound arguments, defaults not given left out, ``self`` left out
    assert json.loads(attributes[genai.TOOL_CALL_ARGUMENTS]) == {"order_id": "A-17", "tool_call_id": "call_1"}
    assert json.loads(attributes[genai.TOOL_CALL_RESULT]) == {"order": "A-17", "status": "shipped"}
    refund = emitter.named("execute_tool refund")
    assert refund.attributes[genai.TOOL_NAME] == "refund"
    assert json.loads(refund.attributes[genai.TOOL_CALL_ARGUMENTS]) == {"order_id": "A-17", "amount": 9.5}
    assert refund.attributes[genai.TOOL_CALL_RESULT] == "refunded 9.5 on A-17"  # a string as it is
    assert genai.TOOL_CALL_ID not in refund.attributes


def test_a_failing_tool_records_its_error_and_raises_it_unchanged() -> None:
    emitter = Emitter()
    with Rollout(emitter, lifecycle_events=False):
        with pytest.raises(ValueError, match="queue must be one of"):
            create_ticket(None, ticket="T-1")
    span = emitter.named("execute_tool create_ticket")
    assert span.status == "error" and span.attributes[genai.ERROR_TYPE] == "ValueError"
    assert json.loads(span.attributes[genai.TOOL_CALL_ARGUMENTS]) == {"queue": None, "ticket": "T-1"}
    assert genai.TOOL_CALL_RESULT not in span.attributes


def test_content_capture_off_keeps_arguments_and_results_out() -> None:
    emitter = Emitter(capture_content=False)
    with Rollout(emitter, lifecycle_events=False):
        Shop().lookup_order("A-17", tool_call_id="call_2")
    attributes = emitter.named("execute_tool lookup_order").attributes
    assert attributes[genai.TOOL_NAME] == "lookup_order" and attributes[genai.TOOL_CALL_ID] == "call_2"
    assert genai.TOOL_CALL_ARGUMENTS not in attributes and genai.TOOL_CALL_RESULT not in attributes


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


def test_odd_arguments_and_results_never_raise_into_the_agent() -> None:
    emitter = Emitter()
    circular: list[Any] = []
    circular.append(circular)
    huge = "x" * (sdk.TOOL_CONTENT_MAX * 3)
    with Rollout(emitter, lifecycle_events=False):
        assert echo(circular) is circular
        assert echo(Unprintable()) is not None
        assert echo(huge) == huge
        with pytest.raises(TypeError):
            echo(1, 2)  # the call's own TypeError, not one of ours
    spans = [s for s in emitter.spans if s.name == "execute_tool echo"]
    assert len(spans) == 4
    for span in spans[:3]:
        assert isinstance(span.attributes[genai.TOOL_CALL_ARGUMENTS], str)
    bounded = spans[2].attributes[genai.TOOL_CALL_RESULT]
    assert len(bounded) < sdk.TOOL_CONTENT_MAX + 100 and bounded.startswith("xxx")
    assert genai.TOOL_CALL_ARGUMENTS not in spans[3].attributes


def test_a_span_of_kind_tool_names_its_tool() -> None:
    emitter = Emitter()
    with Rollout(emitter, lifecycle_events=False) as rollout:
        with rollout.span("search_docs", kind="tool"):
            pass
        with rollout.span("call", kind="tool", attributes={genai.TOOL_NAME: "search"}):
            pass
    assert emitter.named("search_docs").attributes[genai.TOOL_NAME] == "search_docs"
    assert emitter.named("search_docs").attributes[genai.OPERATION_NAME] == "execute_tool"
    assert emitter.named("call").attributes[genai.TOOL_NAME] == "search"


def test_llm_calls_inside_a_reward_or_an_evaluation_are_judge_calls() -> None:
    emitter = Emitter()
    with Rollout(emitter, lifecycle_events=False) as rollout:
        with rollout.span("chat policy", kind="llm"):
            pass
        with rollout.span("grade", kind="reward"):
            with rollout.span("rubric", kind="agent"):
                with rollout.span("chat judge-deep", kind="llm"):
                    pass
        with rollout.span("check", kind="other") as check:
            check.set_attribute(genai.OPERATION_NAME, genai.OPERATION_EVALUATE)
            with rollout.span("chat judge-eval", kind="llm"):
                pass
        with rollout.span("chat policy-after", kind="llm"):
            pass
        with rollout.span("grade again", kind="reward"):
            with Rollout(emitter, lifecycle_events=False) as other:  # another rollout's call
                with other.span("chat other-rollout", kind="llm"):
                    pass
    assert emitter.named("chat judge-deep").attributes[genai.JUDGE] is True
    assert emitter.named("chat judge-eval").attributes[genai.JUDGE] is True
    for policy in ("chat policy", "chat policy-after", "chat other-rollout"):
        assert genai.JUDGE not in emitter.named(policy).attributes, policy
