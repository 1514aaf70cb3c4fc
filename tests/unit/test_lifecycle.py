"""The rollout lifecycle state machine, event by event (no broker)."""

from __future__ import annotations

import itertools

from agentstream.schemas import RolloutConfig, RolloutEvent, RolloutEventType, RolloutStatus
from agentstream.streams.lifecycle import RELEASED_ERROR, RolloutLifecycle

_ids = itertools.count()
T0 = 1_700_000_000_000_000


def ev(kind: str, attempt: int = 0, at: int = 0, **kwargs: object) -> RolloutEvent:
    return RolloutEvent(
        event_id=f"e{next(_ids)}",
        rollout_id="r",
        attempt_id=f"r#{attempt}" if attempt else "",
        attempt_number=attempt,
        type=RolloutEventType(kind),
        timestamp=T0 + at,
        **kwargs,
    )


def run(events: list[RolloutEvent], config: RolloutConfig | None = None):  # type: ignore[no-untyped-def]
    lifecycle = RolloutLifecycle()
    enqueue = ev("task_enqueued", task='{"q": 1}', config=config or RolloutConfig())
    transition = lifecycle.apply(None, enqueue, T0)
    tasks = list(transition.tasks)
    state = transition.state
    for event in events:
        transition = lifecycle.apply(state, event, T0)
        state = transition.state
        tasks += transition.tasks
    return state, tasks


def test_enqueue_queues_attempt_1_and_is_idempotent() -> None:
    lifecycle = RolloutLifecycle()
    enqueue = ev("task_enqueued", task='{"q": 1}')
    first = lifecycle.apply(None, enqueue, T0)
    assert first.state.status == RolloutStatus.QUEUING and [t.attempt_number for t in first.tasks] == [1]
    again = lifecycle.apply(first.state, ev("task_enqueued", task='{"q": 1}'), T0)
    assert again.tasks == [] and again.duplicate
    # a redelivered enqueue of a still-queued rollout can re-send its task
    assert lifecycle.pending_task(first.state, T0).attempt_number == 1  # type: ignore[union-attr]


def test_failed_attempt_is_retried_then_succeeds() -> None:
    state, tasks = run(
        [
            ev("attempt_finished", 1, status="failed", error="boom"),
            ev("attempt_finished", 2, status="succeeded"),
        ],
        RolloutConfig(max_attempts=2),
    )
    assert [t.attempt_number for t in tasks] == [1, 2]
    assert state.status == RolloutStatus.SUCCEEDED
    assert [a.status.value for a in state.attempts] == ["failed", "succeeded"]


def test_retries_stop_at_max_attempts_and_respect_retry_condition() -> None:
    state, tasks = run(
        [ev("attempt_finished", 1, status="failed"), ev("attempt_finished", 2, status="failed")],
        RolloutConfig(max_attempts=2),
    )
    assert state.status == RolloutStatus.FAILED and len(tasks) == 2
    state, tasks = run(
        [ev("attempt_started", 1), ev("attempt_timeout", 1)],
        RolloutConfig(max_attempts=3, retry_condition=["failed"]),
    )
    assert state.status == RolloutStatus.FAILED and [a.status.value for a in state.attempts] == ["timeout"]


def test_stale_and_duplicate_events_change_nothing() -> None:
    finished = ev("attempt_finished", 1, status="succeeded")
    state, _ = run([finished])
    version = state.version
    lifecycle = RolloutLifecycle()
    assert lifecycle.apply(state, finished, T0).duplicate
    late = lifecycle.apply(state, ev("attempt_finished", 1, status="failed"), T0)
    assert not late.changed and late.state.version == version and late.state.status == RolloutStatus.SUCCEEDED


def test_timer_detects_timeout_and_unresponsive() -> None:
    lifecycle = RolloutLifecycle()
    state, _ = run(
        [ev("attempt_started", 1, at=0)], RolloutConfig(timeout_seconds=10, unresponsive_seconds=2)
    )
    assert lifecycle.due(state, T0 + 1_000_000) is None
    assert lifecycle.due(state, T0 + 3_000_000) == RolloutEventType.ATTEMPT_UNRESPONSIVE
    # a span 2.5 s in is a sign of life
    assert lifecycle.due(state, T0 + 3_000_000, last_activity_us=T0 + 2_500_000) is None
    assert (
        lifecycle.due(state, T0 + 11_000_000, last_activity_us=T0 + 10_900_000)
        == RolloutEventType.ATTEMPT_TIMEOUT
    )


def test_released_attempt_is_requeued_without_counting() -> None:
    state, tasks = run(
        [ev("attempt_started", 1), ev("attempt_released", 1), ev("attempt_finished", 2, status="failed")],
        RolloutConfig(max_attempts=2),
    )
    assert [t.attempt_number for t in tasks] == [1, 2, 3]  # the release did not use up an attempt
    assert state.attempts[0].error == RELEASED_ERROR and state.status == RolloutStatus.REQUEUING


def test_cancel_ends_the_rollout_and_later_outcomes_are_recorded_only() -> None:
    state, _ = run(
        [ev("attempt_started", 1), ev("cancel_requested"), ev("attempt_finished", 1, status="succeeded")]
    )
    assert state.status == RolloutStatus.CANCELLED


def test_sdk_rollout_without_queue_is_tracked() -> None:
    lifecycle = RolloutLifecycle()
    finished = RolloutEvent(
        event_id="x",
        rollout_id="sdk",
        attempt_id="a1",
        attempt_number=1,
        type=RolloutEventType.ATTEMPT_FINISHED,
        status="succeeded",
        timestamp=T0,
    )
    transition = lifecycle.apply(None, finished, T0)
    assert transition.state.status == RolloutStatus.SUCCEEDED and transition.ended and not transition.tasks


def test_reward_before_the_first_lifecycle_event_is_kept() -> None:
    from agentstream.schemas import Reward

    lifecycle = RolloutLifecycle()
    reward = Reward(reward_id="rw", rollout_id="sdk", value=0.5, timestamp=T0)
    state = lifecycle.apply_reward(None, reward, T0).state
    finished = RolloutEvent(
        event_id="x",
        rollout_id="sdk",
        attempt_id="a1",
        attempt_number=1,
        type=RolloutEventType.ATTEMPT_FINISHED,
        status="succeeded",
        timestamp=T0,
    )
    transition = lifecycle.apply(state, finished, T0)
    assert transition.ended and transition.state.status == RolloutStatus.SUCCEEDED
    assert transition.state.reward_count == 1 and transition.state.reward_sum == 0.5


def test_a_state_rebuilt_after_the_broker_lost_its_log_outranks_the_one_before() -> None:
    """The memory-only broker restarts empty: the worker rebuilds a rollout from post-outage events
    only. Its state must outrank the pre-outage one (readers keep the highest version), so the
    version follows event time rather than a counter that restarts."""
    lifecycle = RolloutLifecycle()
    before, _ = run(
        [ev("attempt_started", 1, at=1_000), *(ev("heartbeat", 1, at=1_000 + i) for i in range(1, 5))]
    )
    assert before.status == RolloutStatus.RUNNING
    # after the outage the worker has no state; it sees only the attempt's end, 2 s later
    after = lifecycle.apply(
        None, ev("attempt_finished", 1, at=2_000_000, status="succeeded"), T0 + 3_000_000
    ).state
    assert after is not None and after.status == RolloutStatus.SUCCEEDED
    assert after.version > before.version


def test_versions_always_increase_and_ignore_event_times_from_the_future() -> None:
    lifecycle = RolloutLifecycle()
    state = lifecycle.apply(None, ev("task_enqueued", task="{}", at=500), T0 + 1_000).state
    assert state is not None
    versions = [state.version]
    # an old (late) event and one stamped a century ahead of the worker's clock
    for event in (ev("attempt_started", 1, at=10), ev("heartbeat", 1, at=100 * 365 * 86_400 * 10**6)):
        state = lifecycle.apply(state, event, T0 + 2_000).state
        assert state is not None
        versions.append(state.version)
    assert versions == sorted(set(versions))
    assert versions[-1] <= T0 + 2_000  # the future time was capped at the worker's clock
