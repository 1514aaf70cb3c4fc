"""The ``agentstream`` command: every subcommand is registered here and nowhere else."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table

from agentstream.settings import Settings

app = typer.Typer(
    name="agentstream",
    help="Make LLM agents improve continuously: traces and rewards through Kafka into ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
)
topics_app = typer.Typer(help="The Kafka topic catalogue.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")

console = Console()
err_console = Console(stderr=True)


class _State:
    settings: Settings


state = _State()


@app.callback()
def main_options(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data directory (chDB, spool, logs). Env AGENTSTREAM_DATA_DIR.")
    ] = None,
    bootstrap_servers: Annotated[
        str | None,
        typer.Option("--bootstrap-servers", help="Kafka to use instead of the embedded broker. Env AGENTSTREAM_BOOTSTRAP_SERVERS."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Settings come from AGENTSTREAM_* environment variables; these options override them."""
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if bootstrap_servers is not None:
        overrides["bootstrap_servers"] = bootstrap_servers
    state.settings = Settings(**overrides)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=True)],
    )
    if not verbose:
        logging.getLogger("agentstream.kafka").setLevel(logging.CRITICAL)
        logging.getLogger("uvicorn").setLevel(logging.WARNING)
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _resolved() -> Settings:
    try:
        return state.settings.resolved()
    except RuntimeError as e:
        err_console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from e


# ---- broker and topics -------------------------------------------------------------------------------
@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 0,
) -> None:
    """Run the embedded Kafka broker (Tansu, memory storage) until Ctrl-C."""
    from agentstream.deploy.broker import EmbeddedBroker

    stop = _stop_event()
    with EmbeddedBroker(port or state.settings.broker_port) as running:
        console.print(f"Kafka (embedded Tansu) on [bold]{running.bootstrap_servers}[/] — Ctrl-C to stop")
        console.print(f"  export AGENTSTREAM_BOOTSTRAP_SERVERS={running.bootstrap_servers}")
        while not stop.wait(0.5):
            if not running.is_running():
                err_console.print("[red]The broker exited.[/]")
                raise typer.Exit(1)


@topics_app.command("create")
def topics_create() -> None:
    """Create missing topics of the catalogue (idempotent)."""
    from agentstream.deploy.topics import ensure_topics

    statuses = ensure_topics(_resolved())
    table = Table("topic", "partitions", "cleanup", "result")
    for s in statuses:
        table.add_row(s.name, str(s.partitions), s.cleanup_policy, s.outcome + (f" ({s.detail})" if s.detail else ""))
    console.print(table)
    if any(s.outcome == "mismatch" for s in statuses):
        raise typer.Exit(1)


@topics_app.command("list")
def topics_list() -> None:
    """Show the topic catalogue: keys, value schemas, cleanup policies."""
    from agentstream.schemas.topics import CATALOGUE

    settings = state.settings
    table = Table("topic", "key", "value", "partitions", "cleanup", "retention", "purpose")
    for spec in CATALOGUE:
        retention = f"{spec.retention_ms // 86_400_000}d" if spec.retention_ms else "-"
        table.add_row(
            settings.topic(spec.name),
            spec.key,
            spec.value_schema or "raw",
            str(spec.partition_count(settings.partitions)),
            spec.cleanup_policy,
            retention,
            spec.description,
        )
    console.print(table)


# ---- sink --------------------------------------------------------------------------------------------
@app.command()
def sink() -> None:
    """Run the ClickHouse sink (and, on chDB, the query gateway) until Ctrl-C."""
    from agentstream.sinks.service import run_sink

    stop = _stop_event()
    run_sink(_resolved(), stop)


@app.command()
def worker(
    loglevel: str = typer.Option("WARNING", help="Log level of the worker (faust and agentstream)."),
) -> None:
    """Run a stream worker (rollout lifecycle, triplet joiner, per-version metrics) until Ctrl-C.

    Start several: workers of the same app id share the partitions.
    """
    from agentstream.streams.service import run_worker

    run_worker(_resolved(), loglevel=loglevel.upper())


@app.command()
def migrate() -> None:
    """Apply pending ClickHouse migrations (the sink also does this at start)."""
    from agentstream.sinks.connect import connect
    from agentstream.sinks.migrations import migrate as apply

    client = connect(state.settings)
    applied = apply(client)
    console.print(f"{len(applied)} migration(s) applied: {', '.join(f'{m.version:04d}_{m.name}' for m in applied) or 'none pending'}")


# ---- the stack ---------------------------------------------------------------------------------------
@app.command()
def up() -> None:
    """Run broker, topic setup and sink as one supervised group with a live status line."""
    from agentstream.deploy.stack import Stack

    stop = _stop_event()
    stack = Stack(state.settings)
    try:
        stack.start()
    except Exception as e:
        err_console.print(f"[red]Could not start the stack:[/] {e}")
        stack.stop()
        raise typer.Exit(1) from e
    console.print(f"Kafka: [bold]{stack.bootstrap_servers}[/]   data: {state.settings.data_dir}   Ctrl-C to stop")
    try:
        with Live(_status_table(stack), console=console, refresh_per_second=2) as live:
            while not stop.wait(1.0):
                live.update(_status_table(stack))
    finally:
        with console.status("Stopping (the sink flushes first)..."):
            stack.stop()
    console.print("Stopped.")


def _status_table(stack: Any) -> Table:
    table = Table("member", "state", "pid", "restarts", "detail", title=f"agentstream — up {time.time() - stack.started_at:.0f}s")
    for member in stack.members():
        detail = member.detail
        if member.info:
            rows = member.info.get("rows", {})
            detail = "rows " + ", ".join(f"{t} {n}" for t, n in sorted(rows.items())) if rows else "waiting for records"
            detail += f" | dead letters {member.info.get('dead_lettered', 0)}"
            if member.info.get("last_error"):
                detail += f" | last error: {member.info['last_error'][:60]}"
        table.add_row(member.name, member.state, str(member.pid or "-"), str(member.restarts), detail)
    return table


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="A ClickHouse SQL query.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv.")] = "table",
) -> None:
    """Run a query and print the result (through the running sink, or opening chDB directly)."""
    from agentstream.sinks.connect import connect

    try:
        client = connect(state.settings)
        result = client.query(query)
    except Exception as e:
        err_console.print(f"[red]{e}[/]")
        raise typer.Exit(1) from e
    if fmt == "json":
        rows = [dict(zip(result.column_names, row)) for row in result.result_rows]
        console.print_json(json.dumps(rows, default=str))
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(result.column_names)
        writer.writerows(result.result_rows)
    else:
        table = Table(*result.column_names)
        for row in result.result_rows:
            table.add_row(*(str(v) for v in row))
        console.print(table)
        console.print(f"{len(result.result_rows)} row(s)")


# ---- the main job ------------------------------------------------------------------------------------
@app.command()
def demo(
    tickets: Annotated[int, typer.Option(help="Support tickets to run.")] = 200,
    workers: Annotated[int, typer.Option(help="Concurrent rollouts.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON here.")] = None,
) -> None:
    """Bring the embedded stack up, run the example support agent, and show what landed."""
    from agentstream.examples.quickstart import run

    summary = run(state.settings, tickets=tickets, workers=workers, seed=seed, console=console)
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=2))
    if not summary["complete"]:
        err_console.print("[red]Not every record landed in ClickHouse in time.[/]")
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
