"""``agentstream forget``: delete a rollout's or a user's data (see ``sinks/forget.py``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from agentstream.cli.context import console, err_console, resolved_settings
from agentstream.sinks.forget import USER_ID_KEY, ForgetReport

__all__ = ["forget"]


def _print(report: ForgetReport, title: str) -> None:
    table = Table(title=title)
    table.add_column("where")
    table.add_column("records", justify="right")
    for name, count in sorted(report.rows.items()):
        table.add_row(f"table {name}", str(count))
    for topic, count in sorted(report.tombstones.items()):
        table.add_row(f"tombstones on {topic}", str(count))
    console.print(table)


def forget(
    rollout: Annotated[
        list[str] | None, typer.Option("--rollout", metavar="ID", help="A rollout id to forget (repeatable).")
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", metavar="USER", help=f"Forget every rollout recorded for this user ({USER_ID_KEY})."
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be deleted.")] = False,
) -> None:
    """Delete rollouts' data from every ClickHouse table and tombstone their compacted records.

    A user's rollouts: those whose task metadata, spans or rewards carry agentstream.user_id = USER.

    Not reached: Kafka's non-compacted topics (until their retention), a running worker's memory,
    per-version aggregates, models trained on the data.
    """
    from agentstream.clickhouse.connect import connect
    from agentstream.sinks.forget import forget as forget_subject

    if not rollout and user is None:
        err_console.print("[red]give --rollout ID (one or more) or --user USER[/]")
        raise typer.Exit(2)
    settings = resolved_settings()
    try:
        client = connect(settings, write=True)
        preview = forget_subject(settings, client, rollout_ids=rollout or (), user_id=user, dry_run=True)
    except (ValueError, RuntimeError) as e:
        err_console.print(str(e), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from e
    if not preview.rollout_ids:
        console.print(f"No rollouts recorded for user {user!r}: nothing to forget.", markup=False)
        return
    _print(preview, f"{len(preview.rollout_ids)} rollouts: records that would be deleted")
    if dry_run:
        return
    if not yes:
        typer.confirm("Delete them for good?", abort=True)
    try:
        report = forget_subject(settings, client, rollout_ids=preview.rollout_ids)
    except RuntimeError as e:
        err_console.print(str(e), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from e
    _print(report, f"Forgot {len(report.rollout_ids)} rollouts")
