"""`agentstream tasks` (the task queue) and `agentstream runner` (an agent taking tasks from it)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live

from agentstream.cli.context import console, err_console, resolved_settings, state, stop_event

__all__ = ["runner", "tasks_app"]

tasks_app = typer.Typer(help="The task queue: enqueue rollouts for runners.", no_args_is_help=True)


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
    client = AgentStream(resolved_settings())
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
    settings = resolved_settings()
    client = agentstream.init(settings)  # the agent's own SDK calls outside rollouts use it too
    worker = Runner(function, settings, client=client, concurrency=concurrency, worker_id=worker_id)
    stop = stop_event()
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
