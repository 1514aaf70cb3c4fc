"""The stall detector's decision, without a broker: which partitions sit on records in silence."""

from __future__ import annotations

from agentstream.sinks.lag import Observation, StallDetector

P = "spans/0"


def idle(position: int | None, high: int) -> Observation:
    return Observation(position=position, high=high, idle=True)


def test_an_idle_partition_with_records_waiting_and_no_progress_is_stalled_once_per_episode() -> None:
    detector = StallDetector(after_seconds=10)
    assert detector.observe(0, {P: idle(100, 150)}).new == []
    assert detector.observe(5, {P: idle(100, 180)}).new == []  # not long enough yet
    verdict = detector.observe(10, {P: idle(100, 200)})
    assert [(s.partition, s.lag, s.idle_seconds) for s in verdict.new] == [(P, 100, 10)]
    assert verdict.stalled == 1 and verdict.lag == {P: 100}
    again = detector.observe(15, {P: idle(100, 250)})  # still stalled: no second warning
    assert again.new == [] and again.stalled == 1
    over = detector.observe(20, {P: idle(250, 250)})  # read again and caught up
    assert over.recovered == [P] and over.stalled == 0 and over.lag == {P: 0}


def test_constant_lag_counts_too_records_left_behind_after_the_producers_stopped() -> None:
    detector = StallDetector(after_seconds=10)
    detector.observe(0, {P: idle(100, 500)})
    assert [s.lag for s in detector.observe(10, {P: idle(100, 500)}).new] == [400]


def test_a_busy_lane_or_a_moving_position_or_no_lag_is_not_a_stall() -> None:
    detector = StallDetector(after_seconds=10)
    busy = Observation(position=100, high=200, idle=False)  # insert in flight or paused: back-pressure
    for t in range(0, 60, 5):
        assert detector.observe(t, {P: busy}).new == []
    detector = StallDetector(after_seconds=10)
    for t in range(0, 60, 5):  # reading, just behind
        assert detector.observe(t, {P: idle(100 + t, 200 + t)}).new == []
    detector = StallDetector(after_seconds=10)
    for t in range(0, 60, 5):  # nothing to read
        assert detector.observe(t, {P: idle(300, 300)}).new == []


def test_a_busy_check_in_between_starts_the_wait_again() -> None:
    detector = StallDetector(after_seconds=10)
    detector.observe(0, {P: idle(100, 200)})
    detector.observe(5, {P: Observation(100, 200, idle=False)})
    assert detector.observe(10, {P: idle(100, 200)}).new == []
    assert detector.observe(20, {P: idle(100, 200)}).new != []


def test_a_partition_never_read_since_assignment_can_stall() -> None:
    detector = StallDetector(after_seconds=10)
    detector.observe(0, {P: idle(None, 30)})
    assert [s.lag for s in detector.observe(10, {P: idle(None, 30)}).new] == [30]


def test_a_revoked_stalled_partition_ends_its_episode() -> None:
    detector = StallDetector(after_seconds=10)
    detector.observe(0, {P: idle(100, 200)})
    assert detector.observe(10, {P: idle(100, 200)}).stalled == 1
    verdict = detector.observe(15, {})
    assert verdict.recovered == [P] and verdict.stalled == 0
    # assigned again later: a new episode, warned about again
    detector.observe(20, {P: idle(100, 200)})
    assert detector.observe(30, {P: idle(100, 200)}).new != []
