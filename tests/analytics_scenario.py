"""A known, varied history sent through the real pipeline, for the analytics tests.

Two versions of a prompt resource (v1 production, v2 candidate, then v2 promoted), 40 rollouts
with LLM and tool spans, rewards, every failure cause the analytics classify, human handoffs
reported late by a business event, and a model price. ``EXPECTED`` holds the figures every query
over it must reproduce; the numbers follow from the loop below, not from the pipeline.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from agentstream.producers.client import AgentStream
from agentstream.producers.tracer import Rollout
from agentstream.resources.store import ResourceStore
from agentstream.schemas import genai
from agentstream.settings import Settings

RESOURCE = "support_prompt"
MODEL = "gemma-test"
PRICE_INPUT_PER_MILLION = 1.0
PRICE_OUTPUT_PER_MILLION = 2.0
ROLLOUTS_PER_VERSION = 20
OUTPUT_TOKENS = 20

# failure causes of v1's odd rollouts, in turn
V1_CAUSES = ("tool_error", "parse_error", "task_failed", "prompt_drift", "llm_error")


@dataclass
class ScenarioFacts:
    """What the scenario sent, by rollout id, for assertions."""

    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    handoffs: set[str] = field(default_factory=set)
    started_at: float = 0.0
    ended_at: float = 0.0

    def of_version(self, version: str) -> list[dict[str, Any]]:
        return [r for r in self.rollouts.values() if r["version"] == version]

    def failing(self, cause: str) -> list[str]:
        return sorted(rid for rid, r in self.rollouts.items() if r["cause"] == cause)

    @property
    def triplets(self) -> int:
        """LLM calls that end well enough to become triplets (all but the failed LLM calls)."""
        return sum(1 for r in self.rollouts.values() if r["cause"] != "llm_error")


def _plan(version: str, i: int) -> str:
    """The failure cause of rollout ``i`` of ``version`` ('' when it succeeds)."""
    if version == "1":
        return "" if i % 2 == 0 else V1_CAUSES[(i // 2) % len(V1_CAUSES)]
    return "task_failed" if i % 4 == 3 else ""


def _run_one(client: AgentStream, version: str, i: int, facts: ScenarioFacts) -> None:
    cause = _plan(version, i)
    ticket = {
        "ticket_id": f"T{version}-{i:02d}",
        "text": f"My order {i} has not arrived",
        "queue": "shipping",
    }
    input_tokens = 100 + i
    with Rollout(client, ticket, resources={RESOURCE: version}) as rollout:
        prompt = f"Route the ticket. v{version}\nTicket: {ticket['text']}\nCall:"
        answer = (
            "create_ticket(queue='shipping')" if cause != "task_failed" else "create_ticket(queue='billing')"
        )
        llm_version = "2" if cause == "prompt_drift" else version
        llm = rollout.span(
            "route",
            kind="llm",
            attributes={
                genai.OPERATION_NAME: "text_completion",
                genai.REQUEST_MODEL: MODEL,
                genai.INPUT_MESSAGES: json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
                ),
                genai.USAGE_INPUT_TOKENS: input_tokens,
                genai.USAGE_OUTPUT_TOKENS: OUTPUT_TOKENS,
            },
        )
        with llm:
            llm.set_resource(RESOURCE, llm_version)
            time.sleep(0.002 * (i % 5))
            if cause == "llm_error":
                llm.record_exception(ConnectionError("model server closed the connection"))
            else:
                llm.set_attribute(
                    genai.OUTPUT_MESSAGES,
                    json.dumps(
                        [
                            {
                                "role": "assistant",
                                "parts": [{"type": "text", "content": answer}],
                                "finish_reason": "stop",
                            }
                        ]
                    ),
                )
        if cause == "llm_error":
            rollout.fail("LLM call failed: model server closed the connection")
            rollout.emit_reward(0.0, name="routing", source="rule")
        else:
            arguments = {
                "queue": "billing" if cause == "task_failed" else "shipping",
                "ticket": ticket["ticket_id"],
            }
            if cause == "tool_error":
                arguments = {"queue": None, "ticket": ticket["ticket_id"]}
            try:
                with rollout.span(
                    "create_ticket",
                    kind="tool",
                    attributes={
                        genai.OPERATION_NAME: genai.OPERATION_EXECUTE_TOOL,
                        genai.TOOL_NAME: "create_ticket",
                        genai.TOOL_CALL_ARGUMENTS: json.dumps(arguments),
                    },
                ) as tool:
                    if cause == "tool_error":
                        raise ValueError(
                            "create_ticket: queue must be one of billing, shipping, technical, account"
                        )
                    tool.set_attribute(genai.TOOL_CALL_RESULT, json.dumps({"ok": True}))
            except ValueError as e:
                rollout.fail(f"tool call failed: {e}")
            if cause == "parse_error":
                rollout.fail("could not parse the model output as a create_ticket call")
            elif cause in ("task_failed", "prompt_drift"):
                rollout.fail("routed to billing, but this is a shipping ticket")
            rollout.emit_reward(1.0 if not cause else 0.0, name="routing", source="rule")
    facts.rollouts[rollout.rollout_id] = {
        "version": version,
        "i": i,
        "cause": cause,
        "succeeded": not cause,
        "reward": 1.0 if not cause else 0.0,
        "input_tokens": input_tokens,
        "output_tokens": OUTPUT_TOKENS,
        "ticket_id": ticket["ticket_id"],
    }


def run_scenario(settings: Settings) -> ScenarioFacts:
    """Publish the resources, run the rollouts and the late business events; returns what was sent."""
    facts = ScenarioFacts(started_at=time.time())
    with ResourceStore(settings) as store:
        store.publish(
            RESOURCE,
            template="Route the ticket.\nTicket: {{ticket}}\nCall:",
            labels=["production"],
            reason="seed prompt",
        )
        store.publish(
            RESOURCE,
            template="Route the ticket to its queue.\nTicket: {{ticket}}\nCall:",
            labels=["candidate"],
            parent_version=1,
            reason="APO winner",
        )
        client = AgentStream(settings)
        try:
            for version in ("1", "2"):
                for i in range(ROLLOUTS_PER_VERSION):
                    _run_one(client, version, i, facts)
            # business outcome, later: wrongly routed tickets escalate to a human
            for rid, r in facts.rollouts.items():
                if r["cause"] == "task_failed":
                    client.emit_reward(
                        0.0,
                        name="resolution",
                        source="business_event",
                        rollout_id=rid,
                        feedback="escalated to a human",
                        handoff="human",
                    )
                    facts.handoffs.add(rid)
            assert client.flush(30), "scenario records not delivered"
        finally:
            client.close()
        store.label(RESOURCE, "production", 2, reason="promoted: candidate beat production")
    facts.ended_at = time.time()
    return facts


def expected_version(facts: ScenarioFacts, version: str) -> dict[str, Any]:
    """The per-version figures the analytics must report for ``version``."""
    rows = facts.of_version(version)
    succeeded = sum(r["succeeded"] for r in rows)
    input_tokens = sum(r["input_tokens"] for r in rows)
    output_tokens = sum(r["output_tokens"] for r in rows)
    handoffs = sum(
        1 for rid, r in facts.rollouts.items() if r["version"] == version and rid in facts.handoffs
    )
    return {
        "rollouts": len(rows),
        "succeeded": succeeded,
        "failed": len(rows) - succeeded,
        "success_rate": succeeded / len(rows),
        "handoffs": handoffs,
        "handoff_rate": handoffs / len(rows),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost": (input_tokens * PRICE_INPUT_PER_MILLION + output_tokens * PRICE_OUTPUT_PER_MILLION) / 1e6,
    }
