"""How the demo shows its progress: a bar per batch of rollouts, and APO's events as lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agentstream.trainers.evaluation import Evaluation

__all__ = ["apo_printer", "with_progress"]


def with_progress(
    console: Console, title: str, call: Callable[[Callable[[int, int], None]], Evaluation]
) -> Evaluation:
    """Run ``call(update)`` under a progress bar titled ``title``; the bar ends with the success rate."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(title, total=None, rate="")

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        evaluation = call(update)
        progress.update(task, rate=f"success {evaluation.score:.0%}")
    return evaluation


def apo_printer(
    console: Console, on_scored: Callable[[dict[str, Any]], None]
) -> Callable[[str, dict[str, Any]], None]:
    """APO's ``on_event`` for the console; ``on_scored`` also gets every "scored" event."""
    bars: dict[str, Any] = {}

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if kind == "triplets":
            console.print(f"APO: {fields['count']} triplets of the resource to learn from.")
        elif kind == "progress":
            if not console.is_terminal:
                return  # a log file gets the "scored" line, not a bar redrawn per rollout
            progress = bars.get("p")
            if progress is None:
                progress = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=console,
                )
                progress.start()
                bars["p"] = progress
                bars["t"] = progress.add_task(f"  validating v{fields['version']}", total=fields["total"])
            progress.update(bars["t"], completed=fields["done"], total=fields["total"])
        elif kind == "scored":
            progress = bars.pop("p", None)
            if progress is not None:
                progress.stop()
            on_scored(fields)
            console.print(
                f"  v{fields['version']} ({fields['strategy']}): validation success "
                f"{fields['score']:.0%} over {fields['n']} rollouts in {fields['wall_s']:.0f}s"
            )
        elif kind == "candidate":
            verdict = "[green]accepted[/]" if fields["accepted"] else "[red]rejected[/]"
            console.print(
                f"  candidate v{fields['version']} {verdict} ({fields['score']:.0%} vs parent "
                f"{fields['parent_score']:.0%})"
            )
        elif kind == "skip":
            console.print(f"  skipped a {fields['strategy']} proposal: {fields['reason']}")

    return on_event
