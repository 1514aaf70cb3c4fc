"""A small customer-support agent instrumented with the SDK.

It routes a ticket to a queue and files it with a ``create_ticket`` tool call (JSON arguments).
Two rewards judge it: an immediate rule-based one (valid arguments, correct queue, feedback text
when wrong) and a delayed business event (the ticket was resolved, or escalated to a human).

The router here is a keyword policy, so the example needs no model; an LLM-backed router would
be captured the same way, through ``agentstream.instrument_openai()``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

import agentstream

QUEUES = ("billing", "technical", "shipping", "account")

_TEMPLATES: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for order {order}. Please refund the duplicate payment.",
        "My invoice for {month} shows the wrong amount, can you correct it?",
        "Why did my subscription price go up this month? I want a refund.",
        "The card payment for order {order} failed but the money left my account.",
    ],
    "technical": [
        "The app crashes every time I open the settings page on my phone.",
        "I get error 500 when uploading a file larger than 10 MB.",
        "Login with single sign-on stopped working after the last update.",
        "The export to CSV produces an empty file since {month}.",
    ],
    "shipping": [
        "Order {order} has not arrived and tracking has not moved for a week.",
        "The parcel for order {order} was delivered to the wrong address.",
        "Can I change the delivery date for order {order}?",
        "My package arrived damaged, the box was crushed.",
    ],
    "account": [
        "Please change the email address on my account to a new one.",
        "I cannot reset my password, the reset link never arrives.",
        "How do I delete my account and all my data?",
        "Add a second user to our company account please.",
    ],
}

# Deliberately imperfect: overlapping words ("order", "refund") send some tickets astray.
_KEYWORDS: list[tuple[str, str]] = [
    (r"\b(crash|error|login|export|upload|bug)", "technical"),
    (r"\b(order|parcel|package|deliver|tracking)", "shipping"),
    (r"\b(charge|invoice|refund|payment|price)", "billing"),
    (r"\b(password|email|account|user)", "account"),
]


@dataclass(frozen=True)
class Ticket:
    ticket_id: str
    text: str
    queue: str
    tier: str


def make_tickets(count: int, seed: int = 7) -> list[Ticket]:
    """``count`` synthetic tickets with a realistic mix of queues."""
    rng = random.Random(seed)
    weights = [0.35, 0.3, 0.2, 0.15]
    tickets = []
    for i in range(count):
        queue = rng.choices(QUEUES, weights)[0]
        text = rng.choice(_TEMPLATES[queue]).format(
            order=f"#{rng.randint(10_000, 99_999)}", month=rng.choice(["March", "June", "October"])
        )
        tickets.append(Ticket(f"T-{i:05d}", text, queue, rng.choice(["free", "pro", "enterprise"])))
    return tickets


def keyword_route(text: str) -> str:
    lowered = text.lower()
    for pattern, queue in _KEYWORDS:
        if re.search(pattern, lowered):
            return queue
    return "account"


def create_ticket(arguments: dict[str, Any]) -> dict[str, Any]:
    """The tool: validates its JSON arguments like a real ticketing API would."""
    missing = [k for k in ("queue", "priority", "summary") if k not in arguments]
    if missing:
        raise ValueError(f"create_ticket: missing {missing}")
    if arguments["queue"] not in QUEUES:
        raise ValueError(f"create_ticket: unknown queue {arguments['queue']!r}")
    return {"status": "created", "queue": arguments["queue"]}


def handle_ticket(ticket: Ticket) -> dict[str, Any]:
    """Run inside ``agentstream.rollout``: route, file, and score the ticket."""
    with agentstream.span("route", kind="tool", attributes={"gen_ai.tool.name": "keyword_router"}) as step:
        queue = keyword_route(ticket.text)
        step.set_attribute("agentstream.route.queue", queue)
    arguments = {
        "queue": queue,
        "priority": "high" if ticket.tier == "enterprise" else "normal",
        "summary": ticket.text[:80],
    }
    valid = True
    with agentstream.span(
        "create_ticket",
        kind="tool",
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "create_ticket",
            "gen_ai.tool.call.arguments": json.dumps(arguments),
        },
    ) as call:
        try:
            call.set_attribute("gen_ai.tool.call.result", json.dumps(create_ticket(arguments)))
        except ValueError as e:
            valid = False
            call.record_exception(e)
    correct = queue == ticket.queue
    feedback = None if correct else f"routed to {queue}, but this is a {ticket.queue} ticket"
    agentstream.emit_reward(
        (0.5 if valid else 0.0) + (0.5 if correct else 0.0), name="routing", feedback=feedback, source="rule"
    )
    return {"queue": queue, "correct": correct, "valid": valid}


def business_outcome(correct: bool, rng: random.Random) -> tuple[float, str]:
    """What happens to the ticket later: resolved (1.0) or escalated to a human (0.0)."""
    resolved = rng.random() < (0.9 if correct else 0.25)
    return (1.0, "resolved") if resolved else (0.0, "escalated to a human")


def run_ticket(ticket: Ticket) -> tuple[str, dict[str, Any]]:
    """One rollout for one ticket; returns its id and outcome."""
    with agentstream.rollout({"ticket_id": ticket.ticket_id, "text": ticket.text}) as rollout:
        outcome = handle_ticket(ticket)
    return rollout.rollout_id, outcome


__all__ = ["QUEUES", "Ticket", "business_outcome", "create_ticket", "handle_ticket", "make_tickets", "run_ticket"]
