"""The ``agentstream`` command: the root options, and every command group registered in help order.

Each group lives in a module of its own (cli/stack.py, cli/topics.py, cli/tasks.py,
cli/resources.py, cli/analytics.py, cli/train.py, cli/demo.py, cli/serve.py); the settings and
consoles they share are in cli/context.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.logging import RichHandler

from agentstream.cli import analytics, demo, serve, stack, tasks, train
from agentstream.cli.context import err_console, state
from agentstream.cli.dead_letters import dead_letters_app
from agentstream.cli.doctor import doctor
from agentstream.cli.forget import forget
from agentstream.cli.imports import import_files
from agentstream.cli.kafka import kafka_app
from agentstream.cli.otlp import otlp
from agentstream.cli.rejoin import rejoin
from agentstream.cli.resources import resources_app
from agentstream.cli.topics import topics_app
from agentstream.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="agentstream",
    help="Make LLM agents improve continuously: traces and rewards through Kafka into ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main_options(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Data directory (chDB, spool, logs). Env AGENTSTREAM_DATA_DIR."),
    ] = None,
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            "--bootstrap-servers",
            help="Kafka to use instead of the embedded broker. Env AGENTSTREAM_BOOTSTRAP_SERVERS.",
        ),
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
        for noisy in ("httpx", "httpx2", "openai"):  # one line per LLM request otherwise
            logging.getLogger(noisy).setLevel(logging.WARNING)


# The commands, in the order `agentstream --help` lists them; the groups follow them there.
for command in (
    stack.broker,
    stack.sink,
    stack.worker,
    stack.promoter,
    stack.migrate,
    stack.up,
    otlp,
    stack.status,
    analytics.sql,
    doctor,
    forget,
    rejoin,
    demo.demo,
    tasks.runner,
    train.apo,
    train.curate,
    analytics.report,
    analytics.dashboard,
    serve.serve_model,
):
    app.command()(command)
app.command(name="import")(import_files)
app.add_typer(topics_app, name="topics")
app.add_typer(kafka_app, name="kafka")
app.add_typer(tasks.tasks_app, name="tasks")
app.add_typer(resources_app, name="resources")
app.add_typer(analytics.export_app, name="export")
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(train.train_app, name="train")


def main() -> None:
    """The ``agentstream`` console script."""
    app()


if __name__ == "__main__":
    main()
