"""Reading what landed in ClickHouse: `sql`, `report`, `export triplets` and the `dashboard`.

`sql`, `report` and `dashboard` are registered on the root command by cli/app.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from agentstream.cli.context import console, err_console, state

__all__ = ["dashboard", "export_app", "report", "sql"]

export_app = typer.Typer(help="Export data for use elsewhere (training, notebooks).", no_args_is_help=True)


def sql(
    query: Annotated[str, typer.Argument(help="A ClickHouse SQL query.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv.")] = "table",
    write: Annotated[
        bool,
        typer.Option("--write", help="Use the write credential (INSERT, ALTER, DDL); default read-only."),
    ] = False,
) -> None:
    """Run a query and print the result: through the running sink's query endpoint (read-only unless
    --write), or opening chDB directly when no sink owns it."""
    from agentstream.clickhouse.connect import connect

    try:
        client = connect(state.settings, write=write)
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


def _analytics_failed(error: Exception) -> typer.Exit:
    message = str(error)
    if "UNKNOWN_TABLE" in message:
        message += (
            "\nThe analytics tables are missing: run `agentstream migrate` (or `agentstream up`) first."
        )
    err_console.print(message, style="red", markup=False, highlight=False)
    return typer.Exit(1)


def _time_option(text: str | None, option: str) -> Any:
    from agentstream.analytics.report import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as e:
        err_console.print(f"{option}: {e}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from e


def report(
    since: Annotated[
        str | None, typer.Option(help="Start: a duration back from now (30m, 24h, 7d) or an ISO time (UTC).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="End (exclusive), like --since; default now.")] = None,
    by: Annotated[str, typer.Option(help="resource_version, task_type, mode or model.")] = "resource_version",
    resource: Annotated[
        str | None, typer.Option(help="Only rollouts that ran with this resource (NAME or NAME:VERSION).")
    ] = None,
    html: Annotated[Path, typer.Option(help="Where the HTML report (with plots) goes.")] = Path(
        "agentstream-report.html"
    ),
) -> None:
    """Evaluation report: success rate, reward, handoffs, latency, cost and failure causes per group, as a table
    and a self-contained HTML file with plots over time."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from agentstream.analytics.report import EvaluationReport
    from agentstream.clickhouse.connect import connect

    window = {"since": _time_option(since, "--since"), "until": _time_option(until, "--until")}
    try:
        evaluation = EvaluationReport(connect(state.settings), by=by, resource=resource, **window)
        table = evaluation.table()
        path = evaluation.write_html(html)
    except ValueError as e:
        err_console.print(str(e), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from e
    except (RuntimeError, ClickHouseError) as e:
        raise _analytics_failed(e) from e
    if evaluation.groups:
        console.print(table)
    else:
        err_console.print(f"[yellow]No rollouts in this range.[/] ({evaluation.title})", highlight=False)
    console.print(f"HTML report: {path}", markup=False, highlight=False)


@export_app.command("triplets")
def export_triplets(
    out: Annotated[Path, typer.Option(help="Output file (a folder for hf); must not exist.")],
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl, parquet or hf (a datasets save_to_disk folder).")
    ],
    resource: Annotated[str | None, typer.Option(help="Only this resource: NAME or NAME:VERSION.")] = None,
    min_reward: Annotated[
        float | None, typer.Option("--min-reward", help="Only triplets with at least this reward.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="LLM calls from: a duration back from now or an ISO time.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="LLM calls until, like --since.")] = None,
    mode: Annotated[
        list[str] | None,
        typer.Option(
            "--mode", help="Rollout mode to export (repeat; 'all' for every one). Default: all but val, test."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the newest N triplets.")] = None,
) -> None:
    """Export triplets (newest revision of each) with lineage columns, for SFT elsewhere; writes
    <out>.lineage.json next to the output."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from agentstream.analytics.export import TripletExport, TripletExportConfig
    from agentstream.clickhouse.connect import connect

    window = {"since": _time_option(since, "--since"), "until": _time_option(until, "--until")}
    try:
        config = TripletExportConfig(
            resource=resource,
            min_reward=min_reward,
            modes=tuple(mode) if mode else None,
            limit=limit,
            **window,
        )
        settings = state.settings
        exporter = TripletExport(connect(settings), config, source=settings.default_clickhouse_dsn)
        result = exporter.write(out, fmt)
    except ValueError as e:
        err_console.print(str(e), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from e
    except (RuntimeError, ClickHouseError) as e:
        raise _analytics_failed(e) from e
    table = Table("resource", "version", "triplets", "reward mean", title=f"Export {result.export_id}")
    for v in result.by_version:
        reward = "-" if v["reward_mean"] is None else f"{v['reward_mean']:.3f}"
        table.add_row(v["resource_name"], v["resource_version"], str(v["rows"]), reward)
    console.print(table)
    if not result.rows:
        err_console.print("[yellow]No triplets matched: the output is empty.[/]")
    span = " to ".join(t.isoformat() if t else "-" for t in (result.window_start, result.window_end))
    console.print(
        f"{result.rows} triplet(s), {span} -> {result.path} ({result.format}); lineage {result.lineage_path}",
        markup=False,
        highlight=False,
    )


def dashboard(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default 8321); 0 picks a free one.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Require this bearer token (prefer env AGENTSTREAM_DASHBOARD__TOKEN: options show in ps)."
        ),
    ] = None,
) -> None:
    """Serve the web dashboard until Ctrl-C: rollouts, span waterfalls of failures, resources, live A/B."""
    from pydantic import SecretStr

    from agentstream.analytics.dashboard import serve

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if token is not None:
        overrides["token"] = SecretStr(token)
    settings = state.settings
    settings = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(update=overrides)})
    try:
        serve(settings, ready=lambda url: console.print(f"Dashboard on [bold]{url}[/] — Ctrl-C to stop"))
    except OSError as e:
        err_console.print(f"[red]{e}[/]")
        raise typer.Exit(1) from e
