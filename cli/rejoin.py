"""``agentstream rejoin``: re-derive triplets from the spans and rewards topics (see ``streams/rejoin.py``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentstream.cli.context import console, err_console, resolved_settings
from agentstream.schemas import now_us
from agentstream.streams.rejoin import RejoinReport
from agentstream.streams.rejoin_plan import parse_when

__all__ = ["rejoin"]


def _describe(report: RejoinReport) -> str:
    return (
        f"{report.phase}: {report.records_read:,} records read, {report.rollouts:,} rollouts, "
        f"{report.emitted:,} triplets emitted"
    )


def _summary(report: RejoinReport) -> Table:
    table = Table(title="rejoin (dry run: nothing emitted)" if report.dry_run else "rejoin")
    table.add_column("")
    table.add_column("count", justify="right")
    rows = [
        ("records read", report.records_read),
        ("undecodable records skipped", report.undecodable),
        ("rollouts re-derived", report.rollouts),
        ("rollouts skipped: began before --since", report.rollouts_started_before),
        ("triplets derived", report.triplets_derived),
        ("triplets already in the topic", report.existing_triplets),
        ("unchanged", report.unchanged),
        ("new or changed (new versions)", report.new_versions),
        ("retracted", report.retracted),
        ("emitted", report.emitted),
    ]
    for name, count in rows:
        table.add_row(name, f"{count:,}")
    return table


def rejoin(
    since: Annotated[
        str,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="Rollouts whose first record is this recent: an ISO time (UTC unless given) or 30m, 2h, 7d.",
        ),
    ],
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="WHEN", help="Only rollouts that began before this (same forms)."),
    ] = None,
    rollout: Annotated[
        list[str] | None,
        typer.Option("--rollout", metavar="ID", help="Only this rollout (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be emitted; emit nothing.")
    ] = False,
) -> None:
    """Recompute the triplets of retained rollouts from the spans and rewards topics (the log is the
    source of truth) and emit those that changed as new versions of the same triplet ids.

    Run it after a joiner fix or a credit-strategy change. Idempotent: a second run emits nothing.
    ClickHouse keeps the newest version of each triplet; trainers see the update.
    """
    from agentstream.streams.rejoin import rejoin as run_rejoin

    now = now_us()
    try:
        since_us = parse_when(since, now)
        until_us = parse_when(until, now) if until is not None else None
    except ValueError as e:
        err_console.print(f"[red]{e}[/]", highlight=False)
        raise typer.Exit(2) from e
    if until_us is not None and until_us <= since_us:
        err_console.print("[red]--until must be later than --since[/]")
        raise typer.Exit(2)
    settings = resolved_settings()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console
    ) as progress:
        task = progress.add_task("starting", total=None)
        try:
            report = run_rejoin(
                settings,
                since_us,
                until_us=until_us,
                rollout_ids=rollout or (),
                dry_run=dry_run,
                progress=lambda r: progress.update(task, description=_describe(r)),
            )
        except (RuntimeError, TimeoutError) as e:
            err_console.print(str(e), style="red", markup=False, highlight=False)
            raise typer.Exit(1) from e
    console.print(_summary(report))
    if report.rollouts_started_before and rollout:
        err_console.print(
            "Rollouts with records before --since are left alone (their earlier calls were not read): "
            "give an earlier --since.",
            style="yellow",
        )
