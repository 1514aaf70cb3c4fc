"""The attempts a runner runs: started on a worker thread or the event loop, watched by one
heartbeat thread, and reported once, finished or released.

What they report (rollout-events topic, key rollout_id): ``attempt_started`` only for attempts
still running after ``runner.lazy_start_seconds``, ``heartbeat`` every ``runner.heartbeat_seconds``
after that, and one ``attempt_finished`` or, for an attempt the runner gave up on,
``attempt_released``. Once its outcome event is acknowledged by Kafka, an attempt's task records
may be committed.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import math
import numbers
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import orjson

from agentstream.schemas import Task, now_us
from agentstream.schemas.rollout_event import RolloutEventType
from agentstream.settings import RunnerSettings

from .agent_calls import AgentLoop, AgentThreads, awaited, is_async_agent, wants_rollout
from .client import AgentStream
from .resource_choice import Resolution
from .task_offsets import Outcome, Position
from .tracer import Rollout

logger = logging.getLogger("agentstream.producers.runner")

#: How many finished attempts a runner remembers, to skip tasks redelivered after a rebalance.
_RECENT_ATTEMPTS = 10_000

_RUNNING, _FINISHED, _RELEASED = "running", "finished", "released"


@dataclass
class RunnerStats:
    """Counters of a runner (read from any thread; approximate while it runs)."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    #: undecodable task records, and redelivered tasks of attempts this runner already ran
    skipped: int = 0
    in_flight: int = 0
    assigned_partitions: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


class _Attempt:
    """One attempt this runner started. Fields that change are guarded by ``Attempts.lock``."""

    __slots__ = (
        "task",
        "attempt_id",
        "rollout",
        "outcome",
        "t0",
        "started_at",
        "started_sent",
        "last_beat",
        "state",
        "handle",
    )

    def __init__(self, task: Task, attempt_id: str, rollout: Rollout, positions: list[Position]) -> None:
        self.task = task
        self.attempt_id = attempt_id
        self.rollout = rollout
        self.outcome = Outcome(positions)
        self.t0 = time.monotonic()
        self.started_at = now_us()
        self.started_sent = False
        self.last_beat = self.t0
        self.state = _RUNNING
        self.handle: Future[Any] | None = None


class _Unrunnable(RuntimeError):
    """An attempt that cannot start (e.g. its pinned resource version does not exist)."""


class Attempts:
    """The attempts of one runner.

    Args:
        agent: the user's function (see :class:`~agentstream.producers.runner.Runner`).
        client: where spans, rewards and lifecycle events go.
        worker_id: reported on every lifecycle event.
        config: the ``runner`` settings (lazy start, heartbeats).
        stats: the runner's counters; attempts count successes, failures, releases.
        resolve: the resource versions of a task's attempt.
        on_acknowledged: called (on the delivery thread) with the task records of an attempt once
            its outcome event is in Kafka.
    """

    def __init__(
        self,
        agent: Callable[..., Any],
        client: AgentStream,
        worker_id: str,
        config: RunnerSettings,
        stats: RunnerStats,
        resolve: Callable[[Task], Resolution],
        on_acknowledged: Callable[[list[Position]], None],
    ) -> None:
        self.agent = agent
        self.client = client
        self.worker_id = worker_id
        self.config = config
        self.stats = stats
        self.is_async = is_async_agent(agent)
        self._pass_rollout = wants_rollout(agent)
        self._resolve = resolve
        self._on_acknowledged = on_acknowledged
        self.lock = threading.Lock()
        self._inflight: dict[str, _Attempt] = {}
        self._recent: OrderedDict[str, Outcome] = OrderedDict()
        #: attempts whose outcome event Kafka has not acknowledged yet
        self.undelivered = 0
        #: set whenever an attempt finishes
        self.slot_freed = threading.Event()
        self._heartbeat_wake = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._threads: AgentThreads | None = None
        self._loop: AgentLoop | None = None

    # ---- lifetime -----------------------------------------------------------------------------------
    def open(self, concurrency: int) -> None:
        """Start the agent's threads (or event loop) and the heartbeat thread."""
        if self.is_async:
            self._loop = AgentLoop(f"agentstream-runner-loop-{self.worker_id}")
        else:
            self._threads = AgentThreads(concurrency, f"agentstream-runner-{self.worker_id}")
        self._heartbeat_stop.clear()
        threading.Thread(
            target=self._heartbeats, name=f"agentstream-runner-heartbeat-{self.worker_id}", daemon=True
        ).start()

    def close(self) -> None:
        """Stop the heartbeats and let the agent's threads (or loop) go; returns at once."""
        self._heartbeat_stop.set()
        self._heartbeat_wake.set()
        if self._threads is not None:
            self._threads.close()
            self._threads = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def count(self) -> int:
        """Attempts running now."""
        with self.lock:
            return len(self._inflight)

    def match(self, attempt_id: str, position: Position) -> bool | None:
        """A task record of an attempt this runner runs or ran (redelivered after a rebalance came
        before the commit) is answered by that run: ``True`` when its outcome is in Kafka already
        (the record is done), ``False`` when the record now waits for it; ``None``: no such attempt."""
        with self.lock:
            running = self._inflight.get(attempt_id)
            known = running.outcome if running is not None else self._recent.get(attempt_id)
            if known is None:
                return None
            if not known.delivered:
                known.positions.append(position)
            return known.delivered

    # ---- running ------------------------------------------------------------------------------------
    def start(self, task: Task, attempt_id: str, positions: list[Position]) -> None:
        """Start an attempt at ``task``, answering the task records at ``positions``."""
        stamps, resolved, problem = self._resolve(task)
        rollout = Rollout(
            self.client,
            task.input,
            rollout_id=task.rollout_id,
            attempt_id=attempt_id,
            attempt_number=task.attempt_number,
            resources=stamps,
            worker_id=self.worker_id,
            lifecycle_events=False,  # this runner reports them: lazily, and releases too
        )
        rollout.resolved = resolved
        rollout.mode = task.mode
        if problem is not None:
            rollout.fail(problem)
        attempt = _Attempt(task, attempt_id, rollout, positions)
        with self.lock:
            self._inflight[attempt_id] = attempt
            self.stats.in_flight = len(self._inflight)
        self._heartbeat_wake.set()
        if self._loop is not None:
            attempt.handle = self._loop.submit(self._execute_async(attempt))
        else:
            assert self._threads is not None
            # a fresh context per attempt: nothing of one attempt's context leaks into the next
            self._threads.submit(contextvars.Context().run, self._execute_sync, attempt)

    def _arguments(self, attempt: _Attempt) -> tuple[Any, ...]:
        task_input = orjson.loads(attempt.task.input)
        return (task_input, attempt.rollout) if self._pass_rollout else (task_input,)

    def _execute_sync(self, attempt: _Attempt) -> None:
        try:
            with attempt.rollout:
                if attempt.rollout.status == "failed":
                    raise _Unrunnable(attempt.rollout.error)
                result = self.agent(*self._arguments(attempt))
                if inspect.isawaitable(result):  # a sync callable that returned a coroutine
                    result = asyncio.run(awaited(result))
                _emit_return_reward(result, attempt)
        except BaseException:  # the rollout recorded it as the attempt's error
            pass
        self._finish(attempt)

    async def _execute_async(self, attempt: _Attempt) -> None:
        try:
            async with attempt.rollout:
                if attempt.rollout.status == "failed":
                    raise _Unrunnable(attempt.rollout.error)
                result = await self.agent(*self._arguments(attempt))
                _emit_return_reward(result, attempt)
        except asyncio.CancelledError:
            pass  # released at shutdown: nothing is reported
        except Exception:  # the rollout recorded it as the attempt's error
            pass
        self._finish(attempt)

    # ---- outcomes -----------------------------------------------------------------------------------
    def _finish(self, attempt: _Attempt) -> None:
        rollout = attempt.rollout
        status = rollout.status if rollout.status in ("succeeded", "failed") else "failed"
        with self.lock:
            if attempt.state != _RUNNING:
                return  # released: another runner owns the task now
            attempt.state = _FINISHED
            self._retire(attempt)
            if status == "succeeded":
                self.stats.succeeded += 1
            else:
                self.stats.failed += 1
            # Submitted under the lock, so no heartbeat of this attempt can follow it.
            self._report_outcome(
                attempt,
                RolloutEventType.ATTEMPT_FINISHED,
                status=status,
                error=rollout.error if status == "failed" else None,
            )
        self.slot_freed.set()

    def _report_outcome(self, attempt: _Attempt, kind: RolloutEventType, **fields: Any) -> None:
        """The attempt's final event; its task offset is committed once Kafka has it."""
        rollout = attempt.rollout
        self.client.emit_rollout_event(
            rollout.rollout_id,
            kind,
            attempt_id=attempt.attempt_id,
            attempt_number=rollout.attempt_number,
            worker_id=self.worker_id,
            resources=rollout.resources,
            started_at=attempt.started_at,
            llm_calls=rollout.llm_calls,
            input_tokens=rollout.input_tokens,
            output_tokens=rollout.output_tokens,
            on_delivered=functools.partial(self._delivered, attempt.outcome),
            **fields,
        )

    def release_all(self) -> None:
        """Give up on every attempt still running: report each released; async ones are cancelled."""
        with self.lock:
            attempts = list(self._inflight.values())
            for attempt in attempts:
                attempt.state = _RELEASED
                self._retire(attempt)
                self.stats.released += 1
                self._report_outcome(
                    attempt,
                    RolloutEventType.ATTEMPT_RELEASED,
                    error=f"runner {self.worker_id} stopped before the attempt finished",
                )
        for attempt in attempts:
            if attempt.handle is not None:
                attempt.handle.cancel()  # async agents: stop the abandoned coroutine
        if attempts:
            logger.warning(
                "Runner %s: released %d unfinished attempt(s) after the %g s grace period",
                self.worker_id,
                len(attempts),
                self.config.shutdown_grace_seconds,
            )

    def _retire(self, attempt: _Attempt) -> None:
        """Move an attempt from in flight to recent (caller holds the lock)."""
        del self._inflight[attempt.attempt_id]
        self.stats.in_flight = len(self._inflight)
        self.undelivered += 1
        self._recent[attempt.attempt_id] = attempt.outcome
        while len(self._recent) > _RECENT_ATTEMPTS:
            self._recent.popitem(last=False)

    def _delivered(self, outcome: Outcome) -> None:
        """Kafka acknowledged an attempt's outcome (delivery thread): its tasks may be committed."""
        with self.lock:
            outcome.delivered = True
            positions, outcome.positions = outcome.positions, []
            self.undelivered -= 1
        self._on_acknowledged(positions)

    # ---- lazy start and heartbeats: one thread for all attempts ---------------------------------------
    def _heartbeats(self) -> None:
        lazy = self.config.lazy_start_seconds
        every = self.config.heartbeat_seconds
        while not self._heartbeat_stop.is_set():
            self._heartbeat_wake.clear()
            now = time.monotonic()
            next_due = now + 1.0
            with self.lock:
                for attempt in self._inflight.values():
                    if attempt.state != _RUNNING:
                        continue
                    if not attempt.started_sent:
                        due = attempt.t0 + lazy
                        if now >= due:
                            attempt.started_sent = True
                            attempt.last_beat = now
                            self._emit_progress(attempt, RolloutEventType.ATTEMPT_STARTED)
                            due = now + every
                    else:
                        due = attempt.last_beat + every
                        if now >= due:
                            attempt.last_beat = now
                            self._emit_progress(attempt, RolloutEventType.HEARTBEAT)
                            due = now + every
                    next_due = min(next_due, due)
            self._heartbeat_wake.wait(max(0.0, next_due - time.monotonic()))

    def _emit_progress(self, attempt: _Attempt, kind: RolloutEventType) -> None:
        rollout = attempt.rollout
        self.client.emit_rollout_event(
            rollout.rollout_id,
            kind,
            attempt_id=attempt.attempt_id,
            attempt_number=rollout.attempt_number,
            status="running",
            worker_id=self.worker_id,
            resources=rollout.resources,
            started_at=attempt.started_at,
        )


def _emit_return_reward(result: Any, attempt: _Attempt) -> None:
    rollout = attempt.rollout
    if isinstance(result, bool) or not isinstance(result, numbers.Real):
        return
    if attempt.state != _RUNNING:
        return  # released: the return value of an abandoned attempt is not its outcome
    value = float(result)
    if not math.isfinite(value):
        logger.warning(
            "Agent returned %r for rollout %s: not emitted as a reward", result, rollout.rollout_id
        )
        return
    rollout.emit_reward(value, name="return", source="rule")
