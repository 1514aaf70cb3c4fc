"""`agentstream dead-letters`: see the records no consumer could process, and re-drive them once fixed.

The dead letters are read from ClickHouse (``analytics/dead_letters.py``); a replay sends them back
to their source topics (``producers/dead_letter_replay.py``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentstream.cli.context import console, err_console, resolved_settings, state

__all__ = ["dead_letters_app"]

dead_letters_app = typer.Typer(
    help="Records no consumer could process: list them, re-drive them once fixed.", no_args_is_help=True
)

SourceTopic = Annotated[
    str | None,
    typer.Option(
        "--source-topic", help="Refused from this topic (a catalogue name like rewards, or the full name)."
    ),
]
Consumer = Annotated[str | None, typer.Option("--consumer", help="Refused by this consumer (group id).")]
ErrorClass = Annotated[str | None, typer.Option("--error-class", help="With this error class.")]
Since = Annotated[
    str | None, typer.Option("--since", help="Failed at or after: an age (30m, 2h, 7d) or ISO time.")
]
Until = Annotated[str | None, typer.Option("--until", help="Failed before: an age or ISO time.")]


def _filter(**values: Any) -> Any:
    """The validated filter; a bad value is a usage error (exit 2) naming the option."""
    from pydantic import ValidationError

    from agentstream.analytics.dead_letters import DeadLetterFilter
    from agentstream.topics.catalogue import CATALOGUE

    topic = values.get("source_topic")
    settings = state.settings
    if (
        topic
        and topic in {spec.name for spec in CATALOGUE}
        and not topic.startswith(settings.topic_prefix or "\0")
    ):
        values["source_topic"] = settings.topic(topic)
    try:
        return DeadLetterFilter.model_validate({k: v for k, v in values.items() if v not in (None, (), [])})
    except ValidationError as e:
        for error in e.errors(include_url=False):
            option = (
                "--" + "-".join(str(p) for p in error["loc"][:1]).replace("_", "-") if error["loc"] else ""
            )
            err_console.print(
                f"{option or 'filters'}: {error['msg']}", style="red", markup=False, highlight=False
            )
        raise typer.Exit(2) from e


def _failed(error: Exception) -> typer.Exit:
    message = str(error)
    if "UNKNOWN_TABLE" in message or "Unknown table" in message:
        message += (
            "\nThe dead-letter tables are missing: run `agentstream migrate` (or `agentstream up`) first."
        )
    err_console.print(message, style="red", markup=False, highlight=False)
    return typer.Exit(1)


@dead_letters_app.command("list")
def list_dead_letters(
    source_topic: SourceTopic = None,
    consumer: Consumer = None,
    error_class: ErrorClass = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List dead letters, newest first: why, from where, and whether they were replayed."""
    from agentstream.analytics.dead_letters import DeadLetterQueries
    from agentstream.clickhouse.connect import connect

    where = _filter(
        source_topic=source_topic,
        consumer=consumer,
        error_class=error_class,
        since=since,
        until=until,
        limit=limit,
    )
    try:
        found = DeadLetterQueries(connect(state.settings)).records(where)
    except Exception as e:
        raise _failed(e) from e
    if as_json:
        console.print_json(json.dumps(found, default=str))
        return
    table = Table(
        "failed (UTC)",
        "id",
        "source",
        "consumer",
        "error class",
        "key",
        "size",
        "kept as",
        "replayed",
        "reason",
    )
    for row in found["rows"]:
        table.add_row(
            f"{row['failed_at']:%Y-%m-%d %H:%M:%S}",
            row["id"],
            Text(f"{row['source_topic']}/{row['source_partition']}/{row['source_offset']}"),
            Text(row["consumer"]),
            Text(row["error_class"]),
            Text(row["key"] or "-"),
            f"{row['size']:,}",
            ("reference" if row["reference"] else "copy") + (" (repeat)" if row["repeat_of"] else ""),
            f"{row['replayed_at']:%Y-%m-%d %H:%M:%S}" if row["replayed_at"] else "no",
            Text(row["reason"]),
        )  # Text: what a record or consumer recorded is data, never rich markup
    console.print(table)
    console.print(f"{len(found['rows'])} of {found['total']} dead letter(s)")


@dead_letters_app.command("replay")
def replay(
    source_topic: SourceTopic = None,
    consumer: Consumer = None,
    error_class: ErrorClass = None,
    since: Since = None,
    until: Until = None,
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="A dead letter's partition/offset on the dead-letter topic (repeatable)."),
    ] = None,
    offsets: Annotated[
        list[int] | None,
        typer.Option("--offset", help="A source-topic offset (repeatable; with --source-topic)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, oldest first.")] = 1000,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent; send nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Re-drive dead letters to their source topics, once each (after the consumer or schema was fixed).

    Each goes back to the partition it came from with its original key and headers, plus
    agentstream-dlq-replay-of naming the dead letter: if it fails again, its new dead letter shows it
    is a repeat. A dead letter replayed before is never sent again.
    """
    from agentstream.analytics.dead_letters import DeadLetterQueries
    from agentstream.clickhouse.connect import connect
    from agentstream.producers.dead_letter_replay import DeadLetter, Replayer

    if offsets and not source_topic:
        err_console.print("--offset needs --source-topic: offsets are per topic", style="red", markup=False)
        raise typer.Exit(2)
    where = _filter(
        source_topic=source_topic,
        consumer=consumer,
        error_class=error_class,
        since=since,
        until=until,
        ids=tuple(ids or ()),
        source_offsets=tuple(offsets or ()),
        limit=limit,
    )
    settings = resolved_settings()
    try:
        queries = DeadLetterQueries(connect(settings))
        selected = queries.dead_letters(where.model_copy(update={"replayed": False}), newest_first=False)
        pending = [DeadLetter(**row) for row in selected]
        done_before = queries.records(where.model_copy(update={"replayed": True, "limit": 1}))["total"]
    except Exception as e:
        raise _failed(e) from e
    if done_before:
        console.print(f"{done_before} matching dead letter(s) were replayed before, and are left alone.")
    if not pending:
        console.print("No dead letters to replay.")
        return
    try:
        # the replays are recorded with an INSERT: the query endpoint's write role
        replayer = Replayer(settings, queries.client if dry_run else connect(settings, write=True))
        plan = replayer.plan(pending)
    except Exception as e:
        raise _failed(e) from e
    sendable = sum(r.outcome.status == "would send" for r in plan)
    _print([r.outcome for r in plan], f"{sendable} dead letter(s) to re-drive")
    if dry_run or not sendable:
        return
    if not yes:
        typer.confirm(f"Send {sendable} record(s) back to their source topics?", abort=True)
    try:
        outcomes = replayer.send(plan)
    except Exception as e:
        raise _failed(e) from e
    _print(outcomes, "Replayed")
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


def _print(outcomes: list[Any], title: str) -> None:
    table = Table("id", "source", "key", "kept as", "error class", "result", "to / why", title=title)
    styles = {
        "sent": "green",
        "would send": "",
        "already replayed": "dim",
        "skipped": "yellow",
        "failed": "red",
    }
    for o in outcomes:
        d = o.dead_letter
        table.add_row(
            Text(d.id),
            Text(d.source),
            Text(d.key or "-"),
            "reference" if d.is_reference else "copy",
            Text(d.error_class),
            Text(o.status, style=styles[o.status]),
            Text(" ".join(part for part in (o.target, o.detail) if part)),
        )  # Text: a key or reason is data, never rich markup
    console.print(table)
    counts = Counter(o.status for o in outcomes)
    console.print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
