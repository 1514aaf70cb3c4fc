"""The platform's processes: the embedded broker, the sink, stream workers, the promoter, and `up`
(all of them as one supervised group). Registered on the root command by cli/app.py."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from agentstream.cli.context import (
    console,
    err_console,
    kafka_refusal_exits,
    resolved_settings,
    state,
    stop_event,
)

__all__ = ["broker", "migrate", "promoter", "sink", "status", "up", "worker"]


def broker(
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 0,
) -> None:
    """Run the embedded Kafka broker (Tansu, memory storage) until Ctrl-C."""
    from agentstream.deploy.broker import EmbeddedBroker

    stop = stop_event()
    with EmbeddedBroker(port or state.settings.broker_port) as running:
        console.print(f"Kafka (embedded Tansu) on [bold]{running.bootstrap_servers}[/] — Ctrl-C to stop")
        console.print(f"  export AGENTSTREAM_BOOTSTRAP_SERVERS={running.bootstrap_servers}")
        while not stop.wait(0.5):
            if not running.is_running():
                err_console.print("[red]The broker exited.[/]")
                raise typer.Exit(1)


def sink() -> None:
    """Run the ClickHouse sink (and, on chDB, the query gateway) until Ctrl-C."""
    from agentstream.sinks.service import run_sink

    stop = stop_event()
    with kafka_refusal_exits():
        run_sink(resolved_settings(), stop)


def worker(
    loglevel: str = typer.Option("WARNING", help="Log level of the worker (faust and agentstream)."),
) -> None:
    """Run a stream worker (rollout lifecycle, triplet joiner, per-version metrics) until Ctrl-C.

    Start several: workers of the same app id share the partitions.
    """
    from agentstream.sinks.archive import ClickHouseArchive
    from agentstream.streams.service import run_worker

    settings = resolved_settings()
    with kafka_refusal_exits():
        run_worker(settings, loglevel=loglevel.upper(), archive=ClickHouseArchive.for_settings(settings))


def promoter() -> None:
    """Run the A/B promotion controller until Ctrl-C: promote or roll back candidates from live metrics."""
    from agentstream.streams.promotion import run_promoter

    run_promoter(resolved_settings(), stop_event())


def migrate() -> None:
    """Apply pending ClickHouse migrations (the sink also does this at start)."""
    from agentstream.clickhouse.connect import connect
    from agentstream.sinks.migrations import migrate as apply

    client = connect(state.settings, write=True)
    applied = apply(client)
    console.print(
        f"{len(applied)} migration(s) applied: {', '.join(f'{m.version:04d}_{m.name}' for m in applied) or 'none pending'}"
    )


def up() -> None:
    """Run broker, topic setup, sink and stream workers as one supervised group with a live status line."""
    from agentstream.deploy.stack import Stack

    stop = stop_event()
    stack = Stack(state.settings)
    try:
        stack.start()
    except Exception as e:
        err_console.print(f"[red]Could not start the stack:[/] {e}")
        stack.stop()
        raise typer.Exit(1) from e
    console.print(
        f"Kafka: [bold]{stack.bootstrap_servers}[/]   data: {state.settings.data_dir}   Ctrl-C to stop"
    )
    token_file = state.settings.dashboard.token_path(state.settings.data_dir)  # the path, never the token
    console.print(f"Dashboard sign-in token: in {token_file}", markup=False, highlight=False)
    if state.settings.otlp.require_token:
        from agentstream.producers.otlp.receiver import token_file as otlp_token_file

        otlp_token = otlp_token_file(state.settings)  # the path, never the token
        console.print(f"OTLP bearer token: in {otlp_token}", markup=False, highlight=False)
    try:
        with Live(_status_table(stack), console=console, refresh_per_second=2) as live:
            while not stop.wait(1.0):
                live.update(_status_table(stack))
    finally:
        with console.status("Stopping (the sink flushes first)..."):
            stack.stop()
    console.print("Stopped.")


def status(
    partitions: Annotated[bool, typer.Option("--partitions", help="Lag per partition too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Health and readiness of each running member, consumer lag per group, and sink freshness."""
    import json

    from agentstream.cli.ops_status import gather, tables

    report = gather(state.settings)
    if as_json:
        typer.echo(json.dumps(report, indent=2))  # plain: rich would wrap long lines
        return
    for table in tables(report, partitions):
        console.print(table)
    for error in report["errors"]:
        err_console.print(f"[yellow]{error}[/]")


def _status_table(stack: Any) -> Table:
    table = Table(
        "member",
        "state",
        "pid",
        "restarts",
        "detail",
        title=f"agentstream — up {time.time() - stack.started_at:.0f}s",
    )
    for member in stack.members():
        detail = member.detail
        if member.info and "events" in member.info:
            info = member.info
            detail = (
                f"partitions {info.get('assigned_partitions')} | events {info.get('events', 0)} | "
                f"tasks {info.get('tasks', 0)} | triplets {info.get('triplets', 0)} | dead letters {info.get('dead_lettered', 0)}"
            )
        elif member.info:
            rows = member.info.get("rows", {})
            detail = (
                "rows " + ", ".join(f"{t} {n}" for t, n in sorted(rows.items()))
                if rows
                else "waiting for records"
            )
            detail += f" | dead letters {member.info.get('dead_lettered', 0)}"
            if member.info.get("last_error"):
                detail += f" | last error: {member.info['last_error'][:60]}"
        table.add_row(member.name, member.state, str(member.pid or "-"), str(member.restarts), detail)
    return table
