"""The demo's end: the version table, the A/B decisions, the plot and the figures on the console."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from agentstream.deploy.stack import Stack
from agentstream.resources.store import ResourceStore
from agentstream.trainers.evaluation import Evaluation

from .demo_config import DemoData, DemoReport
from .demo_results import plot_demo, version_table
from .support_agent import POOL_RESOURCE, PROMPT_RESOURCE

__all__ = ["summarise"]


def summarise(
    report: DemoReport,
    console: Console,
    stack: Stack,
    store: ResourceStore,
    evaluated: tuple[dict[int, Evaluation], list[tuple[str, Evaluation]]],
    plot_path: Path,
    data: DemoData,
) -> None:
    """Fill in ``report``'s versions, pool, decisions and plot, and print them.

    ``evaluated``: the validation results by version, and every evaluation run, titled.
    """
    scored, evaluations = evaluated
    state = store.state(PROMPT_RESOURCE)
    report.versions = len(state.versions)
    if POOL_RESOURCE in store.names():
        pool = store.state(POOL_RESOURCE)
        report.pool_versions = len(pool.versions)
        report.pool_size = int(pool.versions[pool.latest].config.get("size", "0"))
    table, decisions = version_table(stack, state, scored, evaluations)
    report.decisions = decisions
    console.print(table)
    for decision in decisions:
        console.print(
            f"decision: {decision['action']} v{decision['candidate_version']} vs "
            f"v{decision['production_version']}: {decision['reason']}"
        )
    try:
        report.plot = str(
            plot_demo(report.phases, report.test_seed_by_queue, report.test_final_by_queue, plot_path)
        )
    except (ValueError, OSError) as e:  # a drawing problem must not cost the run its figures
        console.print(f"[yellow]The plot could not be drawn: {e}[/]")
    console.print(
        _per_queue_line("Test split", report.test_seed_by_queue, report.test_final_by_queue, data.queues)
    )
    if report.external_test_final_success is not None:
        console.print(
            _per_queue_line(
                "External test file",
                report.external_test_seed_by_queue,
                report.external_test_final_by_queue,
                data.queues,
            )
        )
    console.print(
        f"Test split: seed {report.test_seed_success:.0%} -> final v{report.final_version} "
        f"{report.test_final_success:.0%} ({(report.test_final_success - report.test_seed_success) * 100:+.0f} "
        f"points); {report.rollouts} rollouts in {report.wall_s:.0f}s; pool {report.pool_size} "
        f"demonstrations in {report.pool_versions} versions. Plot: {report.plot}"
    )


def _per_queue_line(
    title: str, seed: dict[str, float], final: dict[str, float], queues: Sequence[str]
) -> str:
    parts = [
        f"{q} {seed.get(q, 0.0):.0%} -> {final.get(q, 0.0):.0%}" for q in queues if q in seed or q in final
    ]
    return f"{title} per queue (seed -> final): " + ", ".join(parts)
