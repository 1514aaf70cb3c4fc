"""`agentstream doctor ROLLOUT_ID`: what a rollout sent, and why it gave fewer triplets than LLM calls.

Registered on the root command by cli/app.py; the diagnosis itself is analytics/doctor.py's.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from agentstream.cli.context import console, err_console, state

__all__ = ["doctor"]


def doctor(
    rollout_id: Annotated[str, typer.Argument(help="The rollout to examine.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the diagnosis as JSON.")] = False,
) -> None:
    """Why no triplet? What ClickHouse holds of a rollout (spans by kind and dialect, LLM calls,
    rewards, triplets) and, for each LLM call without a triplet, the reason."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from agentstream.analytics.doctor import diagnose
    from agentstream.clickhouse.connect import connect

    settings = state.settings
    emit_uncredited = bool(getattr(settings.streams, "emit_uncredited_calls", True))
    try:
        report = diagnose(connect(settings), rollout_id, emit_uncredited=emit_uncredited)
    except (RuntimeError, ClickHouseError) as e:
        message = str(e)
        if "UNKNOWN_TABLE" in message:
            message += "\nThe tables are missing: run `agentstream migrate` (or `agentstream up`) first."
        err_console.print(message, style="red", markup=False, highlight=False)
        raise typer.Exit(1) from e
    received = report.spans or report.rewards_by_name or report.triplets
    if as_json:
        console.print_json(json.dumps(report.to_dict(), default=str))
    else:
        _print(report)
    if not received:
        raise typer.Exit(1)


def _print(report: Any) -> None:
    from agentstream.analytics.doctor import REASONS

    console.print(f"Rollout {report.rollout_id}", style="bold", markup=False, highlight=False)
    received = Table("Received", "Count", "Detail", title=None)
    received.add_row("spans", str(report.spans), _counts(report.spans_by_kind))
    received.add_row("  by dialect", "", _counts(report.spans_by_dialect))
    received.add_row("LLM calls", str(report.llm_calls), "")
    for name, stats in report.rewards_by_name.items():
        received.add_row(f"reward {name}", str(stats["count"]), f"sum {stats['sum']:g}")
    retracted = len(report.triplets) - report.triplet_count
    received.add_row("triplets", str(report.triplet_count), f"{retracted} retracted" if retracted else "")
    console.print(received)
    for finding in report.findings:
        console.print(f"• {finding}", markup=False, highlight=False)
    if not report.calls:
        return
    calls = Table("Span", "Name", "Dialect", "Triplet")
    calls.add_column("Reason", no_wrap=True)  # the code explained below the table
    calls.add_column("Detail", overflow="fold")
    for call in report.calls:
        generic = REASONS.get(call.reason or "")
        calls.add_row(
            call.span_id,
            call.name,
            call.dialect,
            _triplet(call),
            call.reason or "",
            "" if call.detail == generic else call.detail,
        )
    console.print(calls)
    for code in report.reasons:
        console.print(f"{code}: {REASONS[code]}", markup=False, highlight=False)


def _triplet(call: Any) -> str:
    if call.triplet_id is None:
        return "–"
    if not call.training:
        return f"v{call.triplet_version} retracted"
    reward = "no reward" if call.reward is None else f"reward {call.reward:g}"
    return f"v{call.triplet_version}, {reward}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())
