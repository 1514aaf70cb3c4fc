"""The demo dataset: 360 handwritten customer-support tickets with ground-truth queue and priority.

The tickets live in ``data/support_tickets.jsonl`` (shipped as package data) and were produced by
``data/generate_tickets.py`` from handwritten templates, so no download or model is needed. Each
has a fixed split: ``train`` (200) for few-shot examples or fine-tuning, ``val`` (60) for tuning,
``test`` (100) for reporting; every split carries the same queue mix.

Queues: billing (charges, invoices, refunds, payments, plan pricing), technical (bugs, errors,
crashes, integrations, performance, API), shipping (delivery, tracking, damaged or lost parcels,
return logistics), account (login, password, 2FA, profile, users and permissions, data deletion).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

QUEUES = ("billing", "technical", "shipping", "account")
PRIORITIES = ("low", "normal", "high")
TIERS = ("free", "pro", "enterprise")
SPLITS = ("train", "val", "test")

_PACKAGE = "agentstream.examples"
_RESOURCE = "data/support_tickets.jsonl"


@dataclass(frozen=True)
class Ticket:
    """One support ticket and its ground truth."""

    ticket_id: str
    text: str
    queue: str
    priority: str
    customer_tier: str
    split: str


@cache
def _all_tickets() -> tuple[Ticket, ...]:
    # Read once per process: callers load the same splits repeatedly (few-shot prompts, eval loops).
    raw = resources.files(_PACKAGE).joinpath(_RESOURCE).read_text(encoding="utf-8")
    return tuple(Ticket(**json.loads(line)) for line in raw.splitlines() if line.strip())


def load_tickets(split: str | None = None) -> list[Ticket]:
    """The tickets of ``split`` (``"train"``, ``"val"`` or ``"test"``), or all of them when ``None``.

    Order is the file's, which is fixed, so a seeded few-shot sample is reproducible.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS} or None")
    return [ticket for ticket in _all_tickets() if split is None or ticket.split == split]


class TicketFileError(ValueError):
    """A tickets file that cannot be used, with the line at fault."""


def read_ticket_file(path: Path, *, require_splits: bool = True) -> list[Ticket]:
    """Tickets from a JSONL file of your own: one object per line with ``text`` and ``queue``
    (required), ``split`` (``train``/``val``/``test``; required unless ``require_splits`` is off,
    e.g. for an external test file), ``priority`` (default ``normal``), ``ticket_id`` (default
    ``<file stem>-<line>``) and ``customer_tier`` (default ``pro``).

    Raises :class:`TicketFileError` naming the line of the first bad row, and when a split the
    loop needs (train and val) is empty.
    """
    tickets: list[Ticket] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TicketFileError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise TicketFileError(f"{path}:{number}: expected a JSON object")
        text, queue = row.get("text"), row.get("queue")
        if not isinstance(text, str) or not text.strip() or not isinstance(queue, str) or not queue.strip():
            raise TicketFileError(f"{path}:{number}: needs non-empty string fields 'text' and 'queue'")
        split = row.get("split", "test" if not require_splits else None)
        if split not in SPLITS:
            raise TicketFileError(f"{path}:{number}: split {split!r} is not one of {SPLITS}")
        priority = row.get("priority", "normal")
        if priority not in PRIORITIES:
            raise TicketFileError(f"{path}:{number}: priority {priority!r} is not one of {PRIORITIES}")
        tickets.append(
            Ticket(
                ticket_id=str(row.get("ticket_id") or f"{path.stem}-{number}"),
                text=text.strip(),
                queue=queue.strip(),
                priority=priority,
                customer_tier=str(row.get("customer_tier", "pro")),
                split=split,
            )
        )
    if require_splits:
        for needed in ("train", "val"):
            if not any(t.split == needed for t in tickets):
                raise TicketFileError(
                    f"{path}: no {needed!r} tickets (the loop learns from train, scores on val)"
                )
    elif not tickets:
        raise TicketFileError(f"{path}: no tickets")
    return tickets


def queues_of(tickets: Iterable[Ticket]) -> tuple[str, ...]:
    """The queues that occur, in order of first appearance."""
    return tuple(dict.fromkeys(t.queue for t in tickets))


def label_mix(tickets: Iterable[Ticket]) -> dict[str, float]:
    """Share of each queue in ``tickets``, keyed in ``QUEUES`` order; all zeros for no tickets."""
    counts = dict.fromkeys(QUEUES, 0)
    for ticket in tickets:
        counts[ticket.queue] += 1
    total = sum(counts.values())
    return {queue: (count / total if total else 0.0) for queue, count in counts.items()}


__all__ = [
    "PRIORITIES",
    "QUEUES",
    "SPLITS",
    "TIERS",
    "Ticket",
    "TicketFileError",
    "label_mix",
    "load_tickets",
    "queues_of",
    "read_ticket_file",
]
