"""The rollout lifecycle as a pure state machine: ``RolloutState`` + ``RolloutEvent`` → new state and
the tasks to (re)queue. The Faust agent in :mod:`agentstream.streams.lifecycle_agent` only feeds it
events and stores what it returns; everything that decides a status lives here, testable without a
broker.

Rules:

* ``task_enqueued`` creates the rollout (``queuing``) with attempt 1 ``preparing`` and queues its
  task. Enqueueing an existing rollout id again changes nothing (idempotent enqueue).
* ``attempt_started`` / ``heartbeat`` mark the current attempt ``running``. A rollout traced by the
  SDK without the task queue is created by its first event.
* ``attempt_finished`` settles the current attempt. A succeeded attempt ends the rollout; a failed
  one is retried when its status is in ``retry_condition`` and fewer than ``max_attempts`` attempts
  counted, else the rollout fails.
* ``attempt_timeout`` / ``attempt_unresponsive`` (sent by the worker's timer) settle the attempt
  the same way with status ``timeout`` / ``unresponsive``.
* ``attempt_released`` (a runner shutting down) requeues the attempt; released attempts do not
  count against ``max_attempts``.
* ``cancel_requested`` cancels a rollout that has not ended.
* Events for an attempt that is not the current one, or already settled, change nothing: late or
  redelivered events are harmless. Event ids already seen are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agentstream.schemas import (
    TERMINAL_ATTEMPT,
    TERMINAL_ROLLOUT,
    AttemptState,
    AttemptStatus,
    Reward,
    RolloutConfig,
    RolloutEvent,
    RolloutEventType,
    RolloutState,
    RolloutStatus,
    Task,
    attempt_id_for,
)

#: Event ids remembered per rollout for deduplication (redeliveries come close together).
SEEN_IDS_KEPT = 128
RELEASED_ERROR = "released: the runner stopped before the attempt finished"

_SETTLING = {
    RolloutEventType.ATTEMPT_FINISHED: None,  # status from the event
    RolloutEventType.ATTEMPT_TIMEOUT: AttemptStatus.TIMEOUT,
    RolloutEventType.ATTEMPT_UNRESPONSIVE: AttemptStatus.UNRESPONSIVE,
}


@dataclass
class Transition:
    """What one event did to a rollout."""

    state: RolloutState | None
    changed: bool = False
    tasks: list[Task] = field(default_factory=list)
    #: the rollout reached succeeded/failed/cancelled with this event
    ended: bool = False
    #: the event was seen before (a redelivery)
    duplicate: bool = False


class RolloutLifecycle:
    """Applies rollout events to rollout states (see the module docstring for the rules)."""

    def apply(self, state: RolloutState | None, event: RolloutEvent, now_us: int) -> Transition:
        if state is not None and event.event_id in state.seen_event_ids:
            return Transition(state, duplicate=True)
        kind = event.type
        if kind == RolloutEventType.TASK_ENQUEUED:
            transition = self._enqueue(state, event, now_us)
        elif (state is None or not state.attempts) and kind in (
            RolloutEventType.ATTEMPT_STARTED,
            RolloutEventType.HEARTBEAT,
            RolloutEventType.ATTEMPT_FINISHED,
        ):
            transition = self._untracked(state, event, now_us)
        elif state is None:
            return Transition(None)
        elif kind in (RolloutEventType.ATTEMPT_STARTED, RolloutEventType.HEARTBEAT):
            transition = self._alive(state, event, now_us)
        elif kind in _SETTLING:
            transition = self._settle(state, event, now_us)
        elif kind == RolloutEventType.ATTEMPT_RELEASED:
            transition = self._release(state, event, now_us)
        elif kind == RolloutEventType.CANCEL_REQUESTED:
            transition = self._cancel(state, event, now_us)
        else:
            return Transition(state)
        if transition.changed and transition.state is not None:
            self._stamp(transition.state, event, now_us)
        return transition

    def apply_reward(self, state: RolloutState | None, reward: Reward, now_us: int) -> Transition:
        """Count a reward on its rollout (for per-version metrics). A reward may arrive before the
        rollout's first event; the rollout is then created in ``queuing`` and filled in later."""
        if state is None:
            state = RolloutState(
                rollout_id=reward.rollout_id,
                status=RolloutStatus.QUEUING,
                created_at=now_us,
                updated_at=now_us,
            )
        elif reward.reward_id in state.seen_event_ids:
            return Transition(state, duplicate=True)
        state.reward_count += 1
        state.reward_sum += reward.value
        state.reward_sum_squares += reward.value * reward.value
        if state.last_reward_at is None or reward.timestamp >= state.last_reward_at:
            state.last_reward = reward.value
            state.last_reward_at = reward.timestamp
        state.seen_event_ids = [*state.seen_event_ids[-(SEEN_IDS_KEPT - 1) :], reward.reward_id]
        advance_version(state, reward.timestamp, now_us)
        state.updated_at = now_us
        return Transition(state, changed=True)

    def pending_task(self, state: RolloutState, now_us: int) -> Task | None:
        """The task of the current attempt if it is still waiting for a runner."""
        attempt = state.current
        if state.status in TERMINAL_ROLLOUT or attempt is None or attempt.status != AttemptStatus.PREPARING:
            return None
        return self._task(state, attempt.attempt_number, now_us)

    def due(
        self, state: RolloutState, now_us: int, last_activity_us: int | None = None
    ) -> RolloutEventType | None:
        """Whether the current attempt has timed out or gone unresponsive; the event type to send.

        ``last_activity_us`` is the last span seen for the rollout (spans count as signs of life).
        """
        attempt = state.current
        if state.status in TERMINAL_ROLLOUT or attempt is None or attempt.status != AttemptStatus.RUNNING:
            return None
        config = state.config
        started = attempt.started_at or attempt.last_heartbeat
        if started is None:
            return None
        if config.timeout_seconds is not None and now_us - started > config.timeout_seconds * 1e6:
            return RolloutEventType.ATTEMPT_TIMEOUT
        if config.unresponsive_seconds is not None:
            alive = max(started, attempt.last_heartbeat or 0, last_activity_us or 0)
            if now_us - alive > config.unresponsive_seconds * 1e6:
                return RolloutEventType.ATTEMPT_UNRESPONSIVE
        return None

    # ---- transitions ---------------------------------------------------------------------------
    def _enqueue(self, state: RolloutState | None, event: RolloutEvent, now_us: int) -> Transition:
        if state is not None and (state.attempts or state.input != "null"):
            return Transition(state, duplicate=True)  # enqueued before
        config = event.config or RolloutConfig()
        fresh = RolloutState(
            rollout_id=event.rollout_id,
            status=RolloutStatus.QUEUING,
            input=event.task or "null",
            task_type=event.task_type,
            mode=event.mode or "train",
            config=config,
            resources=dict(event.resources),
            created_at=event.timestamp,
            updated_at=now_us,
        )
        if state is not None:  # rewards arrived first
            self._keep_rewards(state, fresh)
        task = self._queue_attempt(fresh, 1, now_us)
        return Transition(fresh, changed=True, tasks=[task])

    def _untracked(self, known: RolloutState | None, event: RolloutEvent, now_us: int) -> Transition:
        """A rollout traced without the task queue (``known``: what its rewards created, if any)."""
        number = max(event.attempt_number, 1)
        state = RolloutState(
            rollout_id=event.rollout_id,
            status=RolloutStatus.RUNNING,
            input=event.task or "null",
            task_type=event.task_type,
            mode=event.mode or "train",
            resources=dict(event.resources),
            created_at=event.started_at or event.timestamp,
            updated_at=now_us,
        )
        if known is not None:
            self._keep_rewards(known, state)
        state.attempts.append(
            AttemptState(
                attempt_number=number,
                attempt_id=event.attempt_id or attempt_id_for(event.rollout_id, number),
                status=AttemptStatus.PREPARING,
            )
        )
        if event.type == RolloutEventType.ATTEMPT_FINISHED:
            transition = self._settle(state, event, now_us)
        else:
            transition = self._alive(state, event, now_us)
        transition.changed = True
        return transition

    def _alive(self, state: RolloutState, event: RolloutEvent, now_us: int) -> Transition:
        attempt = self._current_open(state, event)
        if attempt is None:
            return Transition(state)
        attempt.status = AttemptStatus.RUNNING
        attempt.worker_id = event.worker_id or attempt.worker_id
        if attempt.started_at is None:
            attempt.started_at = event.started_at or event.timestamp
        attempt.last_heartbeat = max(attempt.last_heartbeat or 0, event.timestamp)
        if event.resources:
            attempt.resources = dict(event.resources)
        if state.status not in TERMINAL_ROLLOUT:
            state.status = RolloutStatus.RUNNING
        return Transition(state, changed=True)

    def _settle(self, state: RolloutState, event: RolloutEvent, now_us: int) -> Transition:
        attempt = self._current_open(state, event)
        if attempt is None:
            return Transition(state)
        status = _SETTLING[event.type]
        if status is None:
            status = (
                AttemptStatus.SUCCEEDED if event.status == AttemptStatus.SUCCEEDED else AttemptStatus.FAILED
            )
        attempt.status = status
        attempt.ended_at = event.timestamp
        attempt.error = event.error if status != AttemptStatus.SUCCEEDED else None
        if event.type == RolloutEventType.ATTEMPT_FINISHED:
            attempt.started_at = attempt.started_at or event.started_at or event.timestamp
            attempt.worker_id = event.worker_id or attempt.worker_id
            if event.resources:
                attempt.resources = dict(event.resources)
            state.llm_calls += event.llm_calls
            state.input_tokens += event.input_tokens
            state.output_tokens += event.output_tokens
        elif attempt.error is None:
            attempt.error = f"attempt {status.value}"
        if state.status in TERMINAL_ROLLOUT:
            return Transition(state, changed=True)  # cancelled meanwhile: record the outcome only
        if status == AttemptStatus.SUCCEEDED:
            return self._end(state, RolloutStatus.SUCCEEDED, None, event.timestamp)
        if status in state.config.retry_condition and self._counted(state) < state.config.max_attempts:
            task = self._queue_attempt(state, attempt.attempt_number + 1, now_us)
            state.status = RolloutStatus.REQUEUING
            return Transition(state, changed=True, tasks=[task])
        return self._end(state, RolloutStatus.FAILED, attempt.error, event.timestamp)

    def _release(self, state: RolloutState, event: RolloutEvent, now_us: int) -> Transition:
        attempt = self._current_open(state, event)
        if attempt is None or state.status in TERMINAL_ROLLOUT:
            return Transition(state)
        attempt.status = AttemptStatus.FAILED
        attempt.error = RELEASED_ERROR
        attempt.ended_at = event.timestamp
        task = self._queue_attempt(state, attempt.attempt_number + 1, now_us)
        state.status = RolloutStatus.REQUEUING
        return Transition(state, changed=True, tasks=[task])

    def _cancel(self, state: RolloutState, event: RolloutEvent, now_us: int) -> Transition:
        if state.status in TERMINAL_ROLLOUT:
            return Transition(state)
        attempt = state.current
        if attempt is not None and attempt.status not in TERMINAL_ATTEMPT:
            attempt.status = AttemptStatus.FAILED
            attempt.error = "cancelled"
            attempt.ended_at = event.timestamp
        return self._end(state, RolloutStatus.CANCELLED, event.error or "cancelled", event.timestamp)

    # ---- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _keep_rewards(source: RolloutState, target: RolloutState) -> None:
        """Carry over what a rollout's rewards recorded before its first lifecycle event."""
        target.version = source.version
        target.seen_event_ids = source.seen_event_ids
        for name in ("reward_count", "reward_sum", "reward_sum_squares", "last_reward", "last_reward_at"):
            setattr(target, name, getattr(source, name))

    @staticmethod
    def _current_open(state: RolloutState, event: RolloutEvent) -> AttemptState | None:
        attempt = state.current
        if attempt is None or attempt.status in TERMINAL_ATTEMPT:
            return None
        if event.attempt_number and event.attempt_number != attempt.attempt_number:
            return None
        return attempt

    @staticmethod
    def _counted(state: RolloutState) -> int:
        return sum(1 for a in state.attempts if a.error != RELEASED_ERROR)

    @classmethod
    def _queue_attempt(cls, state: RolloutState, number: int, now_us: int) -> Task:
        state.attempts.append(
            AttemptState(
                attempt_number=number,
                attempt_id=attempt_id_for(state.rollout_id, number),
                status=AttemptStatus.PREPARING,
            )
        )
        return cls._task(state, number, now_us)

    @staticmethod
    def _task(state: RolloutState, number: int, now_us: int) -> Task:
        return Task(
            rollout_id=state.rollout_id,
            attempt_number=number,
            input=state.input,
            task_type=state.task_type,
            mode=state.mode,
            config=state.config,
            resources=state.resources,
            enqueued_at=now_us,
        )

    @staticmethod
    def _end(state: RolloutState, status: RolloutStatus, error: str | None, at_us: int) -> Transition:
        state.status = status
        state.error = error
        state.ended_at = at_us
        return Transition(state, changed=True, ended=True)

    @staticmethod
    def _stamp(state: RolloutState, event: RolloutEvent, now_us: int) -> None:
        advance_version(state, event.timestamp, now_us)
        state.updated_at = now_us
        state.last_event_id = event.event_id
        state.seen_event_ids = [*state.seen_event_ids[-(SEEN_IDS_KEPT - 1) :], event.event_id]


def advance_version(state: RolloutState, event_time_us: int, now_us: int) -> None:
    """Give ``state`` a version above its last one and at least the event's time (in microseconds).

    Readers keep the highest version of a rollout's state (ClickHouse ``ReplacingMergeTree(version)``,
    the ``rollouts`` view). A plain counter restarts when a worker loses its table (the embedded
    broker keeps its log in memory only): the post-outage "succeeded" at version 3 would lose to the
    pre-outage "running" at version 4 for good. An event-time version cannot go backwards: a state
    rebuilt from later events outranks every state written before them. The event time is capped at
    the worker's clock, so one event stamped far in the future cannot pin a rollout's state.
    """
    state.version = max(state.version + 1, min(event_time_us, now_us))


def attempt_latency_ms(state: RolloutState) -> float:
    """Run time of the attempt that ended the rollout (queue time excluded), in milliseconds."""
    attempt = state.current
    if attempt is None or attempt.ended_at is None:
        return math.nan
    return max(attempt.ended_at - (attempt.started_at or attempt.ended_at), 0) / 1000.0
