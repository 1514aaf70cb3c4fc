"""The trainer runtime: triplet windows from Kafka, trained one at a time, each published exactly once.

    stream = TripletStream(settings, "sft-support", TripletFilter(task_types=("support",)), window_count=256)
    with stream:
        window = stream.next_window()        # a deduped, filtered window and the offsets it covers
        ...train on window.triplets, publish a version whose lineage carries window.lineage()...
        stream.commit(window)                 # only now: offsets move past the window

A trainer is a consumer of the triplet topic in a group of its own (one group per trainer name), so
each trainer sees every triplet once and several trainers never compete for records. Offsets are
committed by hand, and only after the window's ``ResourceVersion`` is in the resources topic.

Exactly-once training without Kafka transactions. A trainer that dies between publishing a version
and committing its offsets would, on restart, read the same records again. Two things stop it from
training them twice:

* the published version's lineage holds the window's offset ranges; when partitions are assigned,
  the stream starts each one at ``max(committed offset, end of the last published window)``
  (``recover``), so a published window is never read again even if its commit was lost;
* the window id is a hash of the topic, group and offset ranges, and :func:`run_trainer` looks for
  a version carrying that id before training (the same window re-read after a lost commit).

A trainer that dies before publishing loses nothing: its offsets were not committed, so the window
is read again. Triplets are re-emitted with a higher ``version`` when late rewards arrive; a window
keeps the highest version of each ``triplet_id`` and a trainer process skips ids it already trained.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from agentstream.settings import Settings

from .checkpoint import find_window_version, published_versions
from .metrics import start_trainer_ops
from .stream import TripletStream
from .windows import TripletFilter, TripletWindow, window_ends

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from agentstream.resources.store import ResourceStore
    from agentstream.schemas import ResourceVersion

logger = logging.getLogger(__name__)

__all__ = [
    "TripletFilter",
    "TripletStream",
    "TripletWindow",
    "WindowOutcome",
    "WindowTrainer",
    "run_trainer",
    "window_ends",
]


# ---- the loop ----------------------------------------------------------------------------------------
@dataclass
class WindowOutcome:
    """What became of one window: the version trained on it, or why there is none."""

    window: TripletWindow
    version: ResourceVersion | None
    #: "published", "already published" (a re-read window), or "skipped: <reason>"
    status: str


class WindowTrainer:
    """What :func:`run_trainer` drives: one algorithm that turns a window into a published version.

    Subclasses (``StreamSFTTrainer``, ``KTOFromLogs``, ...) set ``name``, ``resource_name`` and
    ``triplet_filter`` and implement :meth:`train_window`.
    """

    name: str
    resource_name: str
    triplet_filter: TripletFilter

    def train_window(
        self, window: TripletWindow, stop: threading.Event | None = None, progress: Progress | None = None
    ) -> WindowOutcome:
        raise NotImplementedError


def run_trainer(
    trainer: WindowTrainer,
    settings: Settings,
    store: ResourceStore,
    *,
    window_count: int | None = None,
    window_seconds: float | None = None,
    once: bool = False,
    max_windows: int | None = None,
    stop: threading.Event | None = None,
    idle_timeout: float | None = None,
    show_progress: bool = True,
    on_window: Callable[[WindowOutcome], None] | None = None,
) -> list[WindowOutcome]:
    """Consume, train per window, publish, commit; repeat until ``stop`` (or one window with ``once``).

    ``idle_timeout`` ends the run when no window closes for that long (scripts, tests).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    stop = stop or threading.Event()
    limit = 1 if once else max_windows

    def recover(_partitions: list[int]) -> dict[int, int]:
        return window_ends(
            published_versions(store, trainer.resource_name, trainer.name), stream.topic, stream.group_id
        )

    stream = TripletStream(
        settings,
        trainer.name,
        trainer.triplet_filter,
        window_count=window_count,
        window_seconds=window_seconds,
        recover=recover,
    )
    outcomes: list[WindowOutcome] = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=False,
    )
    ops = start_trainer_ops(stream.settings, trainer.name, stream.group_id, stream.topic, outcomes)
    with stream, progress, ops or contextlib.nullcontext():
        while not stop.is_set() and (limit is None or len(outcomes) < limit):
            filling = progress.add_task(f"window {len(outcomes) + 1}: triplets", total=stream.window_count)
            window = stream.next_window(stop, idle_timeout, partial(_show_filling, progress, filling))
            progress.remove_task(filling)
            if window is None:
                break
            existing = find_window_version(store, trainer.resource_name, window.window_id)
            if existing is not None:
                logger.warning(
                    "%s: window %s was already trained into %s v%d; not training it again",
                    trainer.name,
                    window.window_id,
                    existing.resource_name,
                    existing.version,
                )
                outcome = WindowOutcome(window, existing, "already published")
            else:
                outcome = trainer.train_window(window, stop, progress)
                if outcome.version is None and stop.is_set():
                    break  # interrupted: nothing published, nothing committed
            stream.commit(window)
            outcomes.append(outcome)
            if outcome.version is not None:
                progress.console.print(
                    f"{trainer.name}: window {window.window_id} ({len(window.triplets)} triplets) -> "
                    f"{outcome.version.resource_name} v{outcome.version.version} [{outcome.status}]"
                )
            else:
                progress.console.print(f"{trainer.name}: window {window.window_id}: {outcome.status}")
            if on_window is not None:
                on_window(outcome)
    return outcomes


def _show_filling(progress: Progress, task: TaskID, accepted: int, _records: int) -> None:
    progress.update(task, completed=accepted)
