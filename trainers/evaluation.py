"""Score a resource version with real rollouts: logged triplets cannot say how a *new* prompt would
do, so candidates are run.

The evaluator enqueues one task per item through the normal task path (``task_enqueued`` →
lifecycle processor → tasks topic → runners), pinned to the version under test and marked with the
split's mode (``val`` or ``test``), then reads the rollouts' terminal states from the
``rollout-state`` topic. A rollout's score is 1.0 when it succeeded, else 0.0 (the success rate is
what the A/B policy compares too).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentstream.producers.client import AgentStream
from agentstream.producers.tasks import TaskSpec
from agentstream.schemas import TERMINAL_ROLLOUT, RolloutState, RolloutStatus
from agentstream.settings import Settings
from agentstream.topics.catalogue import ROLLOUT_STATE, TopicSpec
from agentstream.topics.io import TopicReader


@dataclass
class Evaluation:
    """The outcome of one evaluation run."""

    resource_name: str
    version: int
    mode: str
    rollout_ids: list[str]
    scores: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    #: the version each rollout used (of ``resource_name``)
    versions: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def score(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0

    def score_by(self, groups: Sequence[str]) -> dict[str, float]:
        """The success rate per group, ``groups[i]`` being item ``i``'s (e.g. its true queue), so a
        version that answers one class for everything shows it."""
        if len(groups) != len(self.scores):
            raise ValueError(f"{len(groups)} groups for {len(self.scores)} scores")
        totals: dict[str, list[float]] = {}
        for group, score in zip(groups, self.scores, strict=True):
            totals.setdefault(group, []).append(score)
        return {group: sum(s) / len(s) for group, s in totals.items()}


class RolloutEvaluator:
    """Runs items as rollouts pinned to a resource version and collects their outcomes.

    Args:
        settings: Kafka (resolved).
        client: the SDK client tasks are enqueued through.
        timeout: seconds an evaluation may take before it fails.
        task_type: task type of the evaluation rollouts (selects credit assignment etc.).
    """

    def __init__(
        self, settings: Settings, client: AgentStream, *, timeout: float = 900.0, task_type: str = ""
    ) -> None:
        self.settings = settings.resolved()
        self.client = client
        self.timeout = timeout
        self.task_type = task_type
        self._outcomes: dict[str, RolloutState] = {}
        self._waiting: set[str] = set()
        self._lock = threading.Condition()
        self._reader = TopicReader(
            self.settings, (ROLLOUT_STATE,), self._on_state, start="end", name="evaluator"
        )

    def open(self) -> RolloutEvaluator:
        self._reader.start()
        return self

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> RolloutEvaluator:
        return self.open()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def evaluate(
        self,
        resource_name: str,
        version: int,
        items: Sequence[Any],
        *,
        mode: str = "val",
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Evaluation:
        """Run every item (a task input) with ``resource_name`` pinned to ``version``; returns
        scores in item order once all rollouts have ended."""
        return self.run(
            items,
            mode=mode,
            resources={resource_name: str(version)},
            on_progress=on_progress,
            label=f"{resource_name}-v{version}",
            resource_name=resource_name,
            version=version,
        )

    def run(
        self,
        items: Sequence[Any],
        *,
        mode: str,
        resources: dict[str, str] | None = None,
        task_keys: Sequence[str] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        label: str = "run",
        resource_name: str = "",
        version: int = 0,
    ) -> Evaluation:
        """Run items as rollouts (pinned to ``resources``, else as the runners' A/B split assigns,
        sticky per ``task_keys``) and wait for their outcomes."""
        run = uuid.uuid4().hex[:8]
        ids = [f"{mode}-{label}-{run}-{i}" for i in range(len(items))]
        with self._lock:
            self._waiting.update(ids)
        started = time.monotonic()
        keys = list(task_keys) if task_keys is not None else ids
        self.client.enqueue(
            [
                TaskSpec(item, rollout_id=rid, metadata={"run": run, "task_key": key})
                for item, rid, key in zip(items, ids, keys)
            ],
            task_type=self.task_type,
            mode=mode,
            resources=resources or {},
        )
        self.client.flush()
        deadline = started + self.timeout
        done = 0
        with self._lock:
            while True:
                done = sum(1 for rid in ids if rid in self._outcomes)
                if on_progress is not None:
                    on_progress(done, len(ids))
                if done == len(ids):
                    break
                if time.monotonic() > deadline:
                    self._waiting.difference_update(ids)
                    raise TimeoutError(
                        f"{label}: {done}/{len(ids)} rollouts "
                        f"ended within {self.timeout:.0f}s (are runners and stream workers up?)"
                    )
                self._lock.wait(0.5)
            states = [self._outcomes.pop(rid) for rid in ids]
            self._waiting.difference_update(ids)
        return Evaluation(
            resource_name,
            version,
            mode,
            ids,
            scores=[1.0 if s.status == RolloutStatus.SUCCEEDED else 0.0 for s in states],
            versions=[_used(s).get(resource_name, "") for s in states],
            rewards=[s.reward_sum / s.reward_count if s.reward_count else 0.0 for s in states],
            wall_s=time.monotonic() - started,
        )

    def _on_state(self, spec: TopicSpec, key: bytes | None, record: Any) -> None:
        if not isinstance(record, RolloutState) or record.status not in TERMINAL_ROLLOUT:
            return
        with self._lock:
            if record.rollout_id in self._waiting:
                self._outcomes[record.rollout_id] = record
                self._lock.notify_all()


def _used(state: RolloutState) -> dict[str, str]:
    """The resource versions the rollout's last attempt ran with (else its pins)."""
    if state.attempts and state.attempts[-1].resources:
        return state.attempts[-1].resources
    return state.resources
