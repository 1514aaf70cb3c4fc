"""The lifecycle hop: rollout events ──▶ the ``rollouts`` table ──▶ tasks.

    rollout-events ──lifecycle agent──▶ rollouts table (changelog: the compacted rollout-state topic)
                                   └──▶ tasks (this hop is the only writer of the tasks topic)
    attempt timer: overdue attempts ──▶ attempt_timeout / attempt_unresponsive rollout events

What a rollout event does to a rollout's state is decided by :class:`.lifecycle.RolloutLifecycle`;
this hop feeds it events and writes what it returns. Rewards change rollout state too (counts for
the per-version metrics), but the rewards topic has one consuming agent, the joiner, which calls
:meth:`LifecycleHop.record_reward`.

Declared by a class that receives the app, like every hop: topic names and partition counts come
from the worker's settings, resolved when the worker starts, so nothing can be declared at import.
Each event is handled by a plain (synchronous) method: nothing awaits mid-event, see
:mod:`.app`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from faust.types import Message, StreamT

from agentstream.schemas import (
    TERMINAL_ROLLOUT,
    MalformedRecordError,
    Reward,
    RolloutEvent,
    RolloutEventType,
    RolloutState,
    now_us,
)
from agentstream.topics.catalogue import HEADER_EVENT_ID, ROLLOUT_EVENTS, ROLLOUT_STATE, TASKS

from .app import StreamApp
from .lifecycle import RolloutLifecycle, Transition
from .metrics_table import MetricsHop
from .outputs import DeadLetters, Headers, WorkerStats
from .records import ROLLOUT_STATE as ROLLOUT_STATE_CODEC
from .records import UTF8, RolloutStateValue, Serdes, Utf8Key, raw_topic, rollout_table

#: called with a rollout's id and the rollout event that changed what its triplets say of it
RolloutListener = Callable[[str, Message], None]


def _what_triplets_say(state: RolloutState | None) -> tuple[object, ...]:
    """What of a rollout's state its triplets carry or are credited by (see :func:`.calls.strategy_for`)."""
    if state is None:
        return ()
    config = state.config
    return (state.task_type, state.mode, config.credit_assignment, config.discount)


class LifecycleHop:
    """The ``lifecycle`` agent, the ``rollouts`` table and the attempt timer.

    Args:
        app: the worker's app (see :func:`.app.create_app`); its settings name the topics.
        serdes: the worker's decoders and encoders.
        stats: the worker's counters.
        dead_letters: where events that cannot be decoded go.
        metrics: counts the outcome of every rollout that ends.
    """

    def __init__(
        self,
        app: StreamApp,
        serdes: Serdes,
        stats: WorkerStats,
        dead_letters: DeadLetters,
        metrics: MetricsHop,
    ) -> None:
        settings = app.agentstream
        self.events_topic = raw_topic(app, settings.topic(ROLLOUT_EVENTS.name))
        self.state_topic = app.topic(
            settings.topic(ROLLOUT_STATE.name),
            key_type=Utf8Key,
            value_type=RolloutStateValue,
            key_serializer=UTF8,
            value_serializer=ROLLOUT_STATE_CODEC,
            partitions=settings.partitions,
            compacting=True,
            deleting=False,
        )
        #: rollout id -> RolloutState; its changelog is the compacted rollout-state topic
        self.rollouts = rollout_table(
            app, "rollouts", RolloutStateValue, settings.partitions, changelog_topic=self.state_topic
        )
        self.track_rollouts = app.agent(self.events_topic, name="lifecycle")(self._track_rollouts)
        self.check_attempts = app.timer(settings.streams.timer_interval_seconds)(self._check_attempts)

        self.lifecycle = RolloutLifecycle()
        self._app = app
        self._outputs = app.outputs
        self._events_topic_name = settings.topic(ROLLOUT_EVENTS.name)
        self._tasks_topic_name = settings.topic(TASKS.name)
        self._worker_id = settings.streams.app_id
        self._serdes = serdes
        self._stats = stats
        self._dead_letters = dead_letters
        self._metrics = metrics
        # In memory only (rebuilt from new events after a restart): hints, never the source of truth.
        self._last_activity: dict[str, int] = {}
        #: rollout id -> partition: the rollouts whose attempts the timer checks
        self._watched: dict[str, int] = {}
        self._fired: set[tuple[str, str]] = set()
        self._rollout_listeners: list[RolloutListener] = []

    def on_rollout_changed(self, listener: RolloutListener) -> None:
        """Call ``listener(rollout_id, message)`` when a rollout event changes what the rollout's
        triplets say of it (task type, mode, credit assignment or discount): the joiner re-emits
        them, whichever topic its worker read first."""
        self._rollout_listeners.append(listener)

    # ---- the agent ---------------------------------------------------------------------------------
    async def _track_rollouts(self, stream: StreamT) -> None:
        async for event in stream.events():
            self.on_event(event.message)

    def on_event(self, message: Message) -> None:
        """Apply one rollout event (a source message) to its rollout's state; queue its tasks."""
        self._stats.events += 1
        try:
            rollout_event = RolloutEvent.from_avro(self._serdes.decode_event(message.value))
        except (MalformedRecordError, ValueError) as e:
            self._dead_letters.send(message, e)
            return
        rollout_id = rollout_event.rollout_id
        before = self.rollouts.get(rollout_id)
        said_before = _what_triplets_say(before)
        transition = self.lifecycle.apply(before, rollout_event, now_us())
        if transition.duplicate and transition.state is not None:
            self._resend_task(transition.state)
        if not transition.changed or transition.state is None:
            return
        state = transition.state
        try:
            self._serdes.check_state(state)  # invalid or too large for the changelog: keep the old state
        except MalformedRecordError as e:
            self._dead_letters.send(message, e)
            return
        self._send_tasks(transition)
        self.rollouts[rollout_id] = state
        if transition.ended:
            self._metrics.count_outcome(state, message.partition)
        self._watch(state, message.partition)
        if _what_triplets_say(state) != said_before:
            for listener in self._rollout_listeners:
                listener(rollout_id, message)

    def _send_tasks(self, transition: Transition) -> None:
        for task in transition.tasks:
            key = task.rollout_id.encode()
            headers: Headers = [(HEADER_EVENT_ID, f"{task.rollout_id}#{task.attempt_number}".encode())]
            self._outputs.send(self._tasks_topic_name, key, self._serdes.encode_task(task.to_avro()), headers)
            self._stats.tasks += 1

    def _resend_task(self, state: RolloutState) -> None:
        """As for triplets: a redelivered event re-sends the task of a still-queued attempt, in case
        it was lost with a crash (a runner that gets it twice runs the same attempt id; the
        lifecycle keeps the first outcome)."""
        task = self.lifecycle.pending_task(state, now_us())
        if task is not None:
            self._stats.resent += 1
            self._send_tasks(Transition(state, tasks=[task]))

    def _watch(self, state: RolloutState, partition: int) -> None:
        config = state.config
        if state.status in TERMINAL_ROLLOUT:
            self._watched.pop(state.rollout_id, None)
            self._last_activity.pop(state.rollout_id, None)
        elif config.timeout_seconds is not None or config.unresponsive_seconds is not None:
            self._watched[state.rollout_id] = partition

    # ---- called by the joiner, which owns the rewards and spans topics -----------------------------
    def record_reward(self, reward: dict[str, Any], partition: int) -> None:
        """Count a reward (a decoded reward record) on its rollout's state, for per-version metrics."""
        rollout_id = reward["rollout_id"]
        before = self.rollouts.get(rollout_id)
        was_ended = before is not None and before.ended_at is not None
        if not math.isfinite(reward["value"]):
            raise ValueError(f"reward value must be finite, got {reward['value']!r}")
        transition = self.lifecycle.apply_reward(before, Reward.model_construct(**reward), now_us())
        if transition.changed and transition.state is not None:
            self._serdes.check_state(transition.state)  # raises: the joiner dead-letters the reward
            self.rollouts[rollout_id] = transition.state
            if was_ended:
                self._metrics.count_late_reward(transition.state, float(reward["value"]), partition)

    def note_activity(self, rollout_id: str, at_us: int) -> None:
        """A span of the rollout ended at ``at_us``: the attempt is alive (for ``unresponsive_seconds``)."""
        last_activity = self._last_activity
        last_activity[rollout_id] = max(last_activity.get(rollout_id, 0), at_us)

    # ---- the attempt timer -------------------------------------------------------------------------
    async def _check_attempts(self) -> None:
        if not self._watched:
            return
        assigned = {
            tp.partition for tp in self._app.consumer.assignment() if tp.topic == self._events_topic_name
        }
        self.fire_overdue(assigned, now_us())

    def fire_overdue(self, assigned: set[int], now: int) -> None:
        """Send an ``attempt_timeout`` / ``attempt_unresponsive`` event for each overdue attempt of
        the watched rollouts on ``assigned`` partitions (once per attempt and kind); the events come
        back through the agent like any other."""
        watched = self._watched
        for rollout_id, partition in list(watched.items()):
            if partition not in assigned:
                watched.pop(rollout_id, None)
                continue
            state = self.rollouts.get(rollout_id)
            if state is None:
                continue
            due = self.lifecycle.due(state, now, self._last_activity.get(rollout_id))
            attempt = state.current
            if due is None or attempt is None or (attempt.attempt_id, due.value) in self._fired:
                continue
            self._fired.add((attempt.attempt_id, due.value))
            event = RolloutEvent(
                event_id=f"{attempt.attempt_id}:{due.value}",
                rollout_id=rollout_id,
                attempt_id=attempt.attempt_id,
                attempt_number=attempt.attempt_number,
                type=due,
                status="timeout" if due == RolloutEventType.ATTEMPT_TIMEOUT else "unresponsive",
                error=(
                    f"no result within timeout_seconds={state.config.timeout_seconds}"
                    if due == RolloutEventType.ATTEMPT_TIMEOUT
                    else f"no heartbeat or span for unresponsive_seconds={state.config.unresponsive_seconds}"
                ),
                worker_id=self._worker_id,
                timestamp=now,
            )
            key = rollout_id.encode()
            self._outputs.send(self._events_topic_name, key, self._serdes.encode_event(event.to_avro()))
            self._stats.timers_fired += 1
