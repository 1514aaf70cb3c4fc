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
tasks_app = typer.Typer(help="The task queue: enqueue rollouts for runners.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
resources_app = typer.Typer(
    help="Versioned resources (prompt templates, LLM endpoints, checkpoints) and their labels.",
    no_args_is_help=True,
)
app.add_typer(resources_app, name="resources")

console = Console()
err_console = Console(stderr=True)


class _State:
    settings: Settings


state = _State()


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
    from agentstream.topics.admin import ensure_topics

    statuses = ensure_topics(_resolved())
    table = Table("topic", "partitions", "cleanup", "result")
    for s in statuses:
        table.add_row(
            s.name, str(s.partitions), s.cleanup_policy, s.outcome + (f" ({s.detail})" if s.detail else "")
        )
    console.print(table)
    if any(s.outcome == "mismatch" for s in statuses):
        raise typer.Exit(1)


@topics_app.command("list")
def topics_list() -> None:
    """Show the topic catalogue: keys, value schemas, cleanup policies."""
    from agentstream.topics.catalogue import CATALOGUE

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
def promoter() -> None:
    """Run the A/B promotion controller until Ctrl-C: promote or roll back candidates from live metrics."""
    from agentstream.streams.promotion import run_promoter

    run_promoter(_resolved(), _stop_event())


@app.command()
def migrate() -> None:
    """Apply pending ClickHouse migrations (the sink also does this at start)."""
    from agentstream.clickhouse.connect import connect
    from agentstream.sinks.migrations import migrate as apply

    client = connect(state.settings)
    applied = apply(client)
    console.print(
        f"{len(applied)} migration(s) applied: {', '.join(f'{m.version:04d}_{m.name}' for m in applied) or 'none pending'}"
    )


# ---- the stack ---------------------------------------------------------------------------------------
@app.command()
def up() -> None:
    """Run broker, topic setup, sink and stream workers as one supervised group with a live status line."""
    from agentstream.deploy.stack import Stack

    stop = _stop_event()
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
    try:
        with Live(_status_table(stack), console=console, refresh_per_second=2) as live:
            while not stop.wait(1.0):
                live.update(_status_table(stack))
    finally:
        with console.status("Stopping (the sink flushes first)..."):
            stack.stop()
    console.print("Stopped.")


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


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="A ClickHouse SQL query.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv.")] = "table",
) -> None:
    """Run a query and print the result (through the running sink, or opening chDB directly)."""
    from agentstream.clickhouse.connect import connect

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
    seed: Annotated[int, typer.Option(help="Random seed (tickets order, sampling, APO).")] = 7,
    rounds: Annotated[int, typer.Option(help="APO rounds (each: candidates, validation, A/B).")] = 2,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON here.")] = None,
    plot: Annotated[Path, typer.Option(help="Where the PNG plot of success rate per version goes.")] = Path(
        "agentstream-demo.png"
    ),
    val_items: Annotated[
        int | None, typer.Option(help="Validation tickets per score (default: all 60).")
    ] = None,
    test_items: Annotated[
        int | None, typer.Option(help="Test tickets in the final report (default: all 100).")
    ] = None,
) -> None:
    """The improvement loop on the embedded default: a support agent on a local Gemma model gets better by
    itself (APO from its triplets, A/B promotion), with every version recorded."""
    from agentstream.examples.improvement_loop import DemoConfig, run_demo

    config = DemoConfig(seed=seed, rounds=rounds, val_items=val_items, test_items=test_items)
    report = run_demo(state.settings, config, console, plot, json_path)
    if report.test_final_success <= report.test_seed_success:
        err_console.print("[yellow]The final prompt did not beat the seed on the test split.[/]")


# ---- tasks and runners -----------------------------------------------------------------------------
@tasks_app.command("enqueue")
def tasks_enqueue(
    file: Annotated[Path, typer.Argument(help="JSONL file, one task per line.", exists=True, dir_okay=False)],
    task_type: Annotated[str, typer.Option("--task-type", help="Task type of lines that name none.")] = "",
    mode: Annotated[str, typer.Option(help="train, val, test or prod (lines may override).")] = "train",
    max_attempts: Annotated[
        int | None, typer.Option("--max-attempts", min=1, help="Attempts per rollout.")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds before an attempt times out.")] = None,
    unresponsive: Annotated[
        float | None, typer.Option(help="Seconds without a heartbeat before an attempt is unresponsive.")
    ] = None,
    retry_on: Annotated[
        str | None,
        typer.Option("--retry-on", help="Attempt outcomes retried, e.g. failed,timeout,unresponsive."),
    ] = None,
    credit_assignment: Annotated[
        str | None,
        typer.Option("--credit-assignment", help="first_occurrence, final_broadcast or discounted."),
    ] = None,
    discount: Annotated[float | None, typer.Option(help="Gamma of discounted credit assignment.")] = None,
) -> None:
    """Enqueue the tasks of a JSONL file as rollouts.

    Each line is either {"input": ..., "rollout_id"?, "task_type"?, "mode"?, "config"?, "resources"?, "metadata"?} (an object with an "input" key and only these keys) or any other JSON value, which is then the input itself.

    The options are defaults: a line's own fields (and "config" fields) override them. A file with a bad line enqueues nothing.
    """
    from agentstream.producers.client import AgentStream
    from agentstream.producers.tasks import TaskFileError, prepare_task, read_task_file

    config: dict[str, Any] = {}
    if max_attempts is not None:
        config["max_attempts"] = max_attempts
    if timeout is not None:
        config["timeout_seconds"] = timeout
    if unresponsive is not None:
        config["unresponsive_seconds"] = unresponsive
    if retry_on is not None:
        config["retry_condition"] = [c.strip() for c in retry_on.split(",") if c.strip()]
    if credit_assignment is not None:
        config["credit_assignment"] = credit_assignment
    if discount is not None:
        config["discount"] = discount
    try:
        prepare_task(None, task_type=task_type, mode=mode, config=config)
    except ValueError as e:  # the options themselves: every line would fail the same way
        err_console.print(f"invalid options: {e}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from e
    try:
        tasks = read_task_file(file, task_type=task_type, mode=mode, config=config)
    except TaskFileError as e:
        err_console.print(str(e), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from e
    client = AgentStream(_resolved())
    try:
        client.enqueue(tasks)
        delivered = client.flush(30.0)
    finally:
        client.close()
    if not delivered:
        err_console.print(
            f"[yellow]{len(tasks)} task(s) enqueued but not yet delivered to Kafka; they stay in the spool "
            f"({state.settings.spool_dir}) and are sent by the next agentstream process.[/]"
        )
        raise typer.Exit(1)
    console.print(f"Enqueued {len(tasks)} task(s) from {file}.")


@app.command()
def runner(
    agent: Annotated[
        str, typer.Argument(help="The agent function, as MODULE:FUNCTION (module importable from here).")
    ],
    concurrency: Annotated[int | None, typer.Option(min=1, help="Attempts run at once.")] = None,
    worker_id: Annotated[
        str | None, typer.Option("--worker-id", help="Reported on lifecycle events.")
    ] = None,
) -> None:
    """Take tasks from the task queue and run an agent on them until Ctrl-C (then drain gracefully)."""
    import importlib

    import agentstream
    from agentstream.producers.runner import Runner

    module_name, _, function_name = agent.partition(":")
    if not module_name or not function_name:
        err_console.print(f"[red]Expected MODULE:FUNCTION, got {agent!r}[/]")
        raise typer.Exit(2)
    if "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules of the working directory
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as e:
        err_console.print(f"[red]Cannot load {agent}: {e}[/]")
        raise typer.Exit(2) from e
    settings = _resolved()
    client = agentstream.init(settings)  # the agent's own SDK calls outside rollouts use it too
    worker = Runner(function, settings, client=client, concurrency=concurrency, worker_id=worker_id)
    stop = _stop_event()
    worker.start()
    console.print(
        f"Runner [bold]{worker.worker_id}[/] — {agent}, {worker.concurrency} at once, "
        f"tasks from {worker.topic} — Ctrl-C to stop"
    )
    try:
        with Live(_runner_line(worker), console=console, refresh_per_second=4) as live:
            while not stop.wait(0.25) and not worker.stopped:  # stopped by itself: an error, logged
                live.update(_runner_line(worker))
            if worker.stats.in_flight:
                grace = worker.config.shutdown_grace_seconds
                console.print(
                    f"Stopping: in-flight attempts get {grace:.0f} s to finish (Ctrl-C again: release now)"
                )
            # a second Ctrl-C skips the grace period
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: worker.request_stop(force=True))
            worker.request_stop()
            while not worker.stop(timeout=0.25):
                live.update(_runner_line(worker, "stopping"))
            live.update(_runner_line(worker, "stopped"))
    finally:
        agentstream.shutdown()


def _runner_line(worker: Any, phase: str | None = None) -> str:
    s = worker.stats
    phase = phase or ("running" if s.assigned_partitions else "waiting for partitions")
    line = (
        f"[bold]{phase}[/]  done {s.done} ([green]{s.succeeded} ok[/], [red]{s.failed} failed[/])"
        f"  in flight {s.in_flight}  partitions {s.assigned_partitions}"
    )
    if s.released:
        line += f"  released {s.released}"
    return line


# ---- trainers --------------------------------------------------------------------------------------
@app.command()
def apo(
    resource: Annotated[str, typer.Argument(help="The prompt-template resource to improve.")],
    val_file: Annotated[
        Path, typer.Option("--val", help="Validation task inputs, one JSON per line.", exists=True)
    ],
    optimizer_base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server of the optimizer model (textual gradients).")
    ] = None,
    optimizer_model: Annotated[str, typer.Option(help="Optimizer model name.")] = "gpt-4.1-mini",
    optimizer_api: Annotated[str, typer.Option(help="chat, or completions for a base model.")] = "chat",
    start_from: Annotated[str, typer.Option(help="Version or label to start from.")] = "production",
    rounds: Annotated[int, typer.Option(min=1)] = 2,
    beam_width: Annotated[int, typer.Option(min=1)] = 2,
    branch_factor: Annotated[int, typer.Option(min=1)] = 2,
    demos: Annotated[int, typer.Option(min=0, help="Demonstrations per bootstrapped candidate.")] = 8,
    demo_min_reward: Annotated[float, typer.Option(help="Triplet reward a demonstration needs.")] = 1.0,
    task_type: Annotated[str, typer.Option(help="Task type of the validation rollouts.")] = "",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Improve a prompt resource from its triplets; candidates are scored by validation rollouts (runners and
    stream workers must be running); the winner is published and labelled candidate."""
    import os

    from agentstream.producers.client import AgentStream
    from agentstream.trainers.apo import APOConfig, APOTrainer
    from agentstream.trainers.evaluation import RolloutEvaluator

    items = [json.loads(line) for line in val_file.read_text().splitlines() if line.strip()]
    optimizer = None
    if optimizer_base_url is not None:
        import openai

        optimizer = openai.OpenAI(
            base_url=optimizer_base_url, api_key=os.environ.get("OPENAI_API_KEY", "local")
        )
    config = APOConfig(
        resource_name=resource,
        start_from=start_from,
        rounds=rounds,
        beam_width=beam_width,
        branch_factor=branch_factor,
        demos=demos,
        demo_min_reward=demo_min_reward,
        optimizer_model=optimizer_model,
        optimizer_api=optimizer_api,
        seed=seed,
    )
    settings = _resolved()

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if kind == "progress":
            console.print(f"  v{fields['version']}: {fields['done']}/{fields['total']} rollouts", end="\r")
        else:
            console.print(f"{kind}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))

    with (
        AgentStream(settings) as client,
        RolloutEvaluator(settings, client, task_type=task_type) as evaluator,
    ):
        result = APOTrainer(
            config, settings, evaluator=evaluator, val_items=items, optimizer=optimizer, on_event=on_event
        ).train()
    if result.winner is None:
        console.print(f"No candidate beat v{result.baseline.version.version} ({result.baseline.score:.1%}).")
        raise typer.Exit(1)
    console.print(
        f"Published {resource} v{result.winner.version} (validation {result.winner_score:.1%} vs "
        f"{result.baseline.score:.1%}), labelled {config.label}."
    )


# ---- resources -------------------------------------------------------------------------------------
def _resource_store() -> Any:
    from agentstream.resources.store import ResourceStore

    return ResourceStore(state.settings, follow=False, who="cli")


def _resource_errors() -> Any:
    from contextlib import contextmanager

    from agentstream.resources.store import ResourceError

    @contextmanager
    def guard() -> Any:
        try:
            yield
        except ResourceError as e:
            err_console.print(f"[red]{e}[/]")
            raise typer.Exit(2) from None

    return guard()


@resources_app.command("publish")
def resources_publish(
    name: Annotated[str, typer.Argument(help="Resource name, e.g. support-prompt.")],
    template_file: Annotated[
        Path | None,
        typer.Option("--template-file", help="Prompt template ({{variable}} placeholders).", exists=True),
    ] = None,
    uri: Annotated[str | None, typer.Option(help="LLM base_url or checkpoint / adapter URI.")] = None,
    kind: Annotated[str | None, typer.Option(help="prompt_template, llm, model_checkpoint or other.")] = None,
    variable: Annotated[
        list[str] | None,
        typer.Option("--variable", help="Declared template variable (repeat); default: as used."),
    ] = None,
    config: Annotated[
        list[str] | None, typer.Option("--config", help="KEY=VALUE (repeat), e.g. model=gemma.")
    ] = None,
    parent: Annotated[int | None, typer.Option(help="The version this one derives from.")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="Label to point at it (repeat).")] = None,
) -> None:
    """Publish a new immutable version (variables are checked against the template)."""
    pairs = dict(item.split("=", 1) for item in (config or []) if "=" in item)
    template = template_file.read_text() if template_file is not None else None
    with _resource_errors(), _resource_store() as store:
        version = store.publish(
            name,
            template=template,
            uri=uri,
            kind=kind,
            variables=variable or None,
            config=pairs,
            parent_version=parent,
            labels=label or [],
        )
    console.print(
        f"{name} [bold]v{version.version}[/] ({version.kind}, {version.content_hash})"
        + (f" labelled {', '.join(label)}" if label else "")
    )


@resources_app.command("list")
def resources_list(name: Annotated[str | None, typer.Argument(help="Only this resource.")] = None) -> None:
    """Every resource version with its labels and lineage."""
    with _resource_errors(), _resource_store() as store:
        table = Table("resource", "version", "kind", "labels", "parent", "created", "by", "lineage")
        for resource in [name] if name else store.names():
            current = store.state(resource)
            for number, version in sorted(current.versions.items()):
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(version.created_at / 1e6))
                lineage = ", ".join(f"{k}={v}" for k, v in sorted(version.lineage.items()))
                table.add_row(
                    resource,
                    f"v{number}",
                    version.kind,
                    ", ".join(current.labels_of(number)),
                    f"v{version.parent_version}" if version.parent_version else "",
                    created,
                    version.created_by,
                    lineage[:80],
                )
    console.print(table)


@resources_app.command("show")
def resources_show(
    name: Annotated[str, typer.Argument()],
    ref: Annotated[str, typer.Argument(help="Version number or label.")] = "production",
) -> None:
    """One version: its content, labels and lineage."""
    with _resource_errors(), _resource_store() as store:
        version = store.get(name, ref)
        labels = store.state(name).labels_of(version.version)
    console.print(f"[bold]{name} v{version.version}[/] ({version.kind}) labels: {', '.join(labels) or '-'}")
    for key, value in sorted(
        {**version.config, **{f"lineage.{k}": v for k, v in version.lineage.items()}}.items()
    ):
        console.print(f"  {key}: {value}", markup=False)
    if version.uri:
        console.print(f"  uri: {version.uri}", markup=False)
    if version.template is not None:
        console.print(version.template, markup=False, highlight=False)


@resources_app.command("diff")
def resources_diff(
    name: Annotated[str, typer.Argument()],
    a: Annotated[str, typer.Argument(help="Version or label.")],
    b: Annotated[str, typer.Argument(help="Version or label.")],
) -> None:
    """A unified diff of two versions."""
    with _resource_errors(), _resource_store() as store:
        console.print(store.diff(name, a, b) or "(identical)", markup=False, highlight=False)


@resources_app.command("label")
def resources_label(
    name: Annotated[str, typer.Argument()],
    label: Annotated[str, typer.Argument(help="production, candidate or your own.")],
    ref: Annotated[
        str | None, typer.Argument(help="Version or label to point at; omit with --remove.")
    ] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the label.")] = False,
    reason: Annotated[str, typer.Option(help="Why (kept in the label history).")] = "",
) -> None:
    """Move a label to a version (runners switch at their next attempt), or remove it."""
    if (ref is None) != remove:
        err_console.print("[red]give a version to point at, or --remove[/]")
        raise typer.Exit(2)
    with _resource_errors(), _resource_store() as store:
        event = store.label(name, label, None if remove else ref, reason=reason or "cli")
    console.print(
        f"{name}/{label}: v{event.previous_version} -> "
        + (f"v{event.version}" if event.version else "removed")
    )


@resources_app.command("rollback")
def resources_rollback(
    name: Annotated[str, typer.Argument()],
    label: Annotated[str, typer.Option(help="The label to move back.")] = "production",
    to: Annotated[
        str | None, typer.Option(help="Version to go back to; default: where it was before.")
    ] = None,
) -> None:
    """Instant rollback: move the label back to its previous version."""
    with _resource_errors(), _resource_store() as store:
        event = store.rollback(name, label, to)
    console.print(f"{name}/{label}: v{event.previous_version} -> v{event.version}")


# --- analytics: report and export (issue 5) ---
export_app = typer.Typer(help="Export data for use elsewhere (training, notebooks).", no_args_is_help=True)
app.add_typer(export_app, name="export")


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


@app.command()
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
    window = " to ".join(t.isoformat() if t else "-" for t in (result.window_start, result.window_end))
    console.print(
        f"{result.rows} triplet(s), {window} -> {result.path} ({result.format}); lineage {result.lineage_path}",
        markup=False,
        highlight=False,
    )


# --- analytics: dashboard (issue 5) ---
@app.command()
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


# --- trainers: weight training (issue 6) ---
train_app = typer.Typer(
    help="Train model weights from the triplet stream (SFT, KTO, DPO, GRPO from logs): a window of triplets at "
    "a time, each result published as a candidate version of an LLM resource.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

ResourceOpt = Annotated[
    str, typer.Option("--resource", help="The LLM resource trained versions are published to.")
]
BaseModelOpt = Annotated[
    str, typer.Option("--base-model", help="Model folder (or offline hub id) to start from.")
]
NameOpt = Annotated[
    str | None,
    typer.Option(help="Trainer name: its consumer group and lineage (default ALGORITHM-RESOURCE)."),
]
WindowCountOpt = Annotated[int | None, typer.Option("--window-count", min=1, help="Triplets per window.")]
WindowSecondsOpt = Annotated[
    float | None, typer.Option("--window-seconds", help="Close a window this long after its first triplet.")
]
TaskTypeOpt = Annotated[list[str] | None, typer.Option("--task-type", help="Only these task types (repeat).")]
ModeOpt = Annotated[
    list[str] | None, typer.Option("--mode", help="Rollout modes (repeat); default train, prod.")
]
FromResourceOpt = Annotated[
    str | None, typer.Option("--from-resource", help="Only triplets of LLM calls stamped with this resource.")
]
InitFromOpt = Annotated[
    str, typer.Option("--init-from", help="base, latest, or a version/label to continue from.")
]
FormatOpt = Annotated[str, typer.Option("--format", help="auto, messages (chat template) or text.")]
LoraOpt = Annotated[int, typer.Option("--lora-r", min=0, help="LoRA rank; 0 trains every weight.")]
MaxStepsOpt = Annotated[int, typer.Option("--max-steps", help="Steps per window; -1: --epochs over it.")]
EpochsOpt = Annotated[float, typer.Option(help="Epochs over each window.")]
LearningRateOpt = Annotated[float | None, typer.Option("--lr", help="Learning rate (default: trl's).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1)]
MaxLengthOpt = Annotated[int, typer.Option("--max-length", min=8, help="Tokens per example.")]
OutputDirOpt = Annotated[Path | None, typer.Option("--output-dir", help="Default <data_dir>/checkpoints.")]
OnceOpt = Annotated[bool, typer.Option("--once", help="Stop after one window.")]
MaxWindowsOpt = Annotated[
    int | None, typer.Option("--max-windows", min=1, help="Stop after this many windows.")
]
SeedOpt = Annotated[int, typer.Option()]


def _run_training(
    trainer_cls: Any,
    config_cls: Any,
    resource: str,
    base_model: str,
    *,
    name: str | None,
    window_count: int | None,
    window_seconds: float | None,
    task_type: list[str] | None,
    mode: list[str] | None,
    from_resource: str | None,
    init_from: str,
    fmt: str,
    lora_r: int,
    max_steps: int,
    epochs: float,
    learning_rate: float | None,
    batch_size: int,
    max_length: int,
    output_dir: Path | None,
    once: bool,
    max_windows: int | None,
    seed: int,
    **algorithm_fields: Any,
) -> None:
    settings = _resolved()
    config = config_cls(
        resource_name=resource,
        base_model=base_model,
        trainer_name=name,
        output_dir=output_dir,
        init_from=init_from,
        format=fmt,
        from_resource=from_resource,
        task_types=tuple(task_type or ()),
        modes=tuple(mode) if mode else None,
        window_count=window_count,
        window_seconds=window_seconds,
        lora_r=lora_r,
        learning_rate=learning_rate,
        max_steps=max_steps,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        **algorithm_fields,
    )
    trainer = trainer_cls(config, settings)
    console.print(
        f"Trainer [bold]{trainer.name}[/] ({trainer.algorithm}): {base_model} -> {resource}, windows of "
        f"{config.window_count or settings.trainer.window_count} triplets — Ctrl-C to stop"
    )
    outcomes = trainer.run(once=once, max_windows=max_windows, stop=_stop_event())
    published = sum(outcome.version is not None for outcome in outcomes)
    console.print(f"{len(outcomes)} window(s), {published} version(s) published.")


@train_app.command("sft")
def train_sft(
    resource: ResourceOpt,
    base_model: BaseModelOpt,
    min_reward: Annotated[
        float | None,
        typer.Option(
            "--min-reward", help="Learn triplets rewarded at least this (default trainer.min_reward)."
        ),
    ] = None,
    name: NameOpt = None,
    window_count: WindowCountOpt = None,
    window_seconds: WindowSecondsOpt = None,
    task_type: TaskTypeOpt = None,
    mode: ModeOpt = None,
    from_resource: FromResourceOpt = None,
    init_from: InitFromOpt = "base",
    fmt: FormatOpt = "auto",
    lora_r: LoraOpt = 0,
    max_steps: MaxStepsOpt = -1,
    epochs: EpochsOpt = 1.0,
    learning_rate: LearningRateOpt = None,
    batch_size: BatchSizeOpt = 8,
    max_length: MaxLengthOpt = 1024,
    output_dir: OutputDirOpt = None,
    once: OnceOpt = False,
    max_windows: MaxWindowsOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Supervised fine-tuning on high-reward triplets (completion- or assistant-only loss)."""
    from agentstream.trainers.sft import StreamSFTConfig, StreamSFTTrainer

    _run_training(
        StreamSFTTrainer,
        StreamSFTConfig,
        resource,
        base_model,
        min_reward=min_reward,
        name=name,
        window_count=window_count,
        window_seconds=window_seconds,
        task_type=task_type,
        mode=mode,
        from_resource=from_resource,
        init_from=init_from,
        fmt=fmt,
        lora_r=lora_r,
        max_steps=max_steps,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_length=max_length,
        output_dir=output_dir,
        once=once,
        max_windows=max_windows,
        seed=seed,
    )


@train_app.command("kto")
def train_kto(
    resource: ResourceOpt,
    base_model: BaseModelOpt,
    threshold: Annotated[
        float | None, typer.Option(help="Reward of a desirable attempt (default trainer.min_reward).")
    ] = None,
    beta: Annotated[float, typer.Option()] = 0.1,
    name: NameOpt = None,
    window_count: WindowCountOpt = None,
    window_seconds: WindowSecondsOpt = None,
    task_type: TaskTypeOpt = None,
    mode: ModeOpt = None,
    from_resource: FromResourceOpt = None,
    init_from: InitFromOpt = "base",
    fmt: FormatOpt = "auto",
    lora_r: LoraOpt = 0,
    max_steps: MaxStepsOpt = -1,
    epochs: EpochsOpt = 1.0,
    learning_rate: LearningRateOpt = None,
    batch_size: BatchSizeOpt = 8,
    max_length: MaxLengthOpt = 1024,
    output_dir: OutputDirOpt = None,
    once: OnceOpt = False,
    max_windows: MaxWindowsOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """KTO on logged attempts labelled desirable by a reward threshold."""
    from agentstream.trainers.rl import KTOFromLogs, KTOFromLogsConfig

    _run_training(
        KTOFromLogs,
        KTOFromLogsConfig,
        resource,
        base_model,
        threshold=threshold,
        beta=beta,
        name=name,
        window_count=window_count,
        window_seconds=window_seconds,
        task_type=task_type,
        mode=mode,
        from_resource=from_resource,
        init_from=init_from,
        fmt=fmt,
        lora_r=lora_r,
        max_steps=max_steps,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_length=max_length,
        output_dir=output_dir,
        once=once,
        max_windows=max_windows,
        seed=seed,
    )


@train_app.command("dpo")
def train_dpo(
    resource: ResourceOpt,
    base_model: BaseModelOpt,
    beta: Annotated[float, typer.Option()] = 0.1,
    min_margin: Annotated[
        float, typer.Option("--min-margin", help="Reward gap a best/worst pair needs.")
    ] = 0.0,
    name: NameOpt = None,
    window_count: WindowCountOpt = None,
    window_seconds: WindowSecondsOpt = None,
    task_type: TaskTypeOpt = None,
    mode: ModeOpt = None,
    from_resource: FromResourceOpt = None,
    init_from: InitFromOpt = "base",
    fmt: FormatOpt = "auto",
    lora_r: LoraOpt = 0,
    max_steps: MaxStepsOpt = -1,
    epochs: EpochsOpt = 1.0,
    learning_rate: LearningRateOpt = None,
    batch_size: BatchSizeOpt = 8,
    max_length: MaxLengthOpt = 1024,
    output_dir: OutputDirOpt = None,
    once: OnceOpt = False,
    max_windows: MaxWindowsOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """DPO on the best against the worst logged attempt of each task."""
    from agentstream.trainers.rl import DPOFromLogs, DPOFromLogsConfig

    _run_training(
        DPOFromLogs,
        DPOFromLogsConfig,
        resource,
        base_model,
        beta=beta,
        min_margin=min_margin,
        name=name,
        window_count=window_count,
        window_seconds=window_seconds,
        task_type=task_type,
        mode=mode,
        from_resource=from_resource,
        init_from=init_from,
        fmt=fmt,
        lora_r=lora_r,
        max_steps=max_steps,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_length=max_length,
        output_dir=output_dir,
        once=once,
        max_windows=max_windows,
        seed=seed,
    )


@train_app.command("grpo")
def train_grpo(
    resource: ResourceOpt,
    base_model: BaseModelOpt,
    num_generations: Annotated[int, typer.Option("--num-generations", min=2, help="Attempts per group.")] = 4,
    beta: Annotated[float, typer.Option(help="KL coefficient (0: no reference model).")] = 0.0,
    name: NameOpt = None,
    window_count: WindowCountOpt = None,
    window_seconds: WindowSecondsOpt = None,
    task_type: TaskTypeOpt = None,
    mode: ModeOpt = None,
    from_resource: FromResourceOpt = None,
    init_from: InitFromOpt = "base",
    fmt: FormatOpt = "auto",
    lora_r: LoraOpt = 0,
    max_steps: MaxStepsOpt = -1,
    epochs: EpochsOpt = 1.0,
    learning_rate: LearningRateOpt = None,
    batch_size: BatchSizeOpt = 8,
    max_length: MaxLengthOpt = 1024,
    output_dir: OutputDirOpt = None,
    once: OnceOpt = False,
    max_windows: MaxWindowsOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """GRPO replaying logged attempts of the same task with their logged rewards (nothing is generated)."""
    from agentstream.trainers.rl import GRPOFromLogs, GRPOFromLogsConfig

    _run_training(
        GRPOFromLogs,
        GRPOFromLogsConfig,
        resource,
        base_model,
        num_generations=num_generations,
        beta=beta,
        name=name,
        window_count=window_count,
        window_seconds=window_seconds,
        task_type=task_type,
        mode=mode,
        from_resource=from_resource,
        init_from=init_from,
        fmt=fmt,
        lora_r=lora_r,
        max_steps=max_steps,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_length=max_length,
        output_dir=output_dir,
        once=once,
        max_windows=max_windows,
        seed=seed,
    )


# --- deploy: model server (issue 6) ---
@app.command("serve-model")
def serve_model(
    resource: Annotated[
        list[str],
        typer.Option("--resource", help="LLM resource whose checkpoint versions to serve (repeat)."),
    ],
    host: Annotated[str | None, typer.Option(help="Listen address; default model_server.host.")] = None,
    port: Annotated[
        int | None, typer.Option(help="Listen port; default model_server.port (0: a free one).")
    ] = None,
) -> None:
    """Serve an LLM resource's checkpoints over an OpenAI-compatible API (CPU), following new versions
    and label moves live: request model NAME (production), NAME:vN or NAME@label."""
    from agentstream.serving.model_server import ModelServer

    server = ModelServer(_resolved(), resource, host=host, port=port)
    server.run(
        on_ready=lambda url: console.print(
            f"Serving {', '.join(resource)} at [bold]{url}[/] (model NAME, NAME:vN or NAME@label) — Ctrl-C to stop"
        )
    )


@train_app.command("grpo-online")
def train_grpo_online(
    resource: ResourceOpt,
    reward: Annotated[str, typer.Option(help="Reward function, MODULE:FUNCTION (see trainers/grpo.py).")],
    init_from: Annotated[
        str, typer.Option("--init-from", help="Version or label to start from, or base.")
    ] = "production",
    base_model: Annotated[
        str | None,
        typer.Option("--base-model", help="Model folder for --init-from base (or an adapter's base)."),
    ] = None,
    prompts: Annotated[
        str, typer.Option(help="tasks (the tasks topic) or triplets (recent prompts).")
    ] = "tasks",
    prompt: Annotated[
        str | None, typer.Option(help="MODULE:FUNCTION building a prompt from a task input (tasks only).")
    ] = None,
    task_type: Annotated[str | None, typer.Option("--task-type", help="Only tasks of this type.")] = None,
    mode: ModeOpt = None,
    max_prompts: Annotated[int, typer.Option("--max-prompts", min=1, help="Newest prompts used.")] = 256,
    num_generations: Annotated[
        int, typer.Option("--num-generations", min=2, help="Completions per prompt.")
    ] = 4,
    max_completion_length: Annotated[int, typer.Option("--max-completion-length", min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1)] = 100,
    learning_rate: Annotated[float, typer.Option("--lr")] = 1e-5,
    beta: Annotated[float, typer.Option(help="KL coefficient (0: no reference model).")] = 0.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Completions per step.")] = 4,
    lora_r: LoraOpt = 0,
    vllm: Annotated[
        bool | None,
        typer.Option("--vllm/--no-vllm", help="Generate with vLLM (default: when installed and on GPU)."),
    ] = None,
    output_dir: OutputDirOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Online GRPO: generate completions for real task prompts with the policy, score them with your reward,
    train, and publish the result as a candidate version."""
    from agentstream.trainers.grpo import OnlineGRPOConfig, OnlineGRPOTrainer

    if prompts not in ("tasks", "triplets"):
        err_console.print(f"[red]--prompts must be tasks or triplets, not {prompts!r}[/]")
        raise typer.Exit(2)
    config = OnlineGRPOConfig(
        resource_name=resource,
        reward=reward,
        init_from=init_from,
        base_model=base_model,
        prompts=prompts,  # type: ignore[arg-type]
        prompt=prompt,
        task_type=task_type,
        modes=tuple(mode or ("train",)),
        max_prompts=max_prompts,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        temperature=temperature,
        max_steps=max_steps,
        learning_rate=learning_rate,
        beta=beta,
        per_device_train_batch_size=batch_size,
        lora_r=lora_r,
        use_vllm=vllm,
        output_dir=output_dir,
        seed=seed,
    )

    def on_log(entry: dict[str, Any]) -> None:
        if "reward" in entry:
            console.print(
                f"  step {entry['step']}: reward {entry['reward']:.3f}  loss {entry.get('loss', 0.0):.4f}"
            )

    try:
        trainer = OnlineGRPOTrainer(config, _resolved(), on_log=on_log)
    except ValueError as e:
        err_console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from e
    try:
        result = trainer.train(stop=_stop_event())
    finally:
        trainer.close()
    if result.version is None:
        console.print(f"Stopped after {result.steps} step(s); nothing published.")
        raise typer.Exit(1)
    console.print(
        f"Published {resource} [bold]v{result.version.version}[/] ({result.generation} generation, "
        f"{result.steps} steps on {result.prompts} prompts), labelled {config.label}."
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
