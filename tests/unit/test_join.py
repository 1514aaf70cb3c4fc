"""``RolloutJoin``: versioned, retractable triplet updates that converge to the batch credit."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.schemas.rollout_event import CreditAssignment
from agentstream.streams.credit import Credit, LlmCall, RewardEvent, assign_credit
from agentstream.streams.join import RolloutJoin, TripletUpdate, triplet_id_for
from tests.unit.test_credit import call, fingerprint, reward, rollout_events

Event = LlmCall | RewardEvent


def feed(join: RolloutJoin, event: Event) -> bool:
    return join.add_call(event) if isinstance(event, LlmCall) else join.add_reward(event)


def restart(join: RolloutJoin) -> RolloutJoin:
    """What a restarted worker holds: the state after a JSON round trip."""
    data = json.loads(json.dumps(join.to_dict()))
    restored = RolloutJoin.from_dict(data)
    assert restored.to_dict() == join.to_dict()
    return restored


def test_triplet_id_is_deterministic() -> None:
    assert triplet_id_for("ro-1", "s1") == triplet_id_for("ro-1", "s1")
    assert triplet_id_for("ro-1", "s1") != triplet_id_for("ro-1", "s2") != triplet_id_for("ro-2", "s1")
    assert triplet_id_for("ro-1", "s1").startswith("tr-") and len(triplet_id_for("ro-1", "s1")) == 27


def test_first_emission_then_nothing_without_new_events() -> None:
    join = RolloutJoin("ro-1", "final_broadcast")
    assert join.add_call(call("c1", 10)) and join.add_call(call("c2", 20))
    assert join.changes() == []  # no reward yet: nothing to emit
    assert join.add_reward(reward("r1", 1.0, 30, feedback="ok"))
    credit = Credit(1.0, "ok", ("r1",))
    assert join.changes() == [
        TripletUpdate(triplet_id_for("ro-1", "c1"), "c1", "a1", 1, 0, credit),
        TripletUpdate(triplet_id_for("ro-1", "c2"), "c2", "a1", 1, 1, credit),
    ]
    assert join.changes() == []
    # Duplicates change nothing.
    assert not join.add_call(call("c1", 10)) and not join.add_reward(reward("r1", 1.0, 30, feedback="ok"))
    assert join.changes() == []


def test_moved_reward_is_retracted_from_its_old_call() -> None:
    join = RolloutJoin("ro-1", "first_occurrence")
    join.add_call(call("c1", 10))
    join.add_reward(reward("r1", 1.0, 15))
    [first] = join.changes()
    assert (first.span_id, first.version, first.credit) == ("c1", 1, Credit(1.0, None, ("r1",)))
    # A late call that ended closer to the reward takes it over; c1 is retracted.
    join.add_call(call("c0", 12))
    updates = {u.span_id: u for u in join.changes()}
    assert updates["c1"].version == 2 and updates["c1"].credit is None and updates["c1"].step == 0
    assert updates["c0"].version == 1 and updates["c0"].credit == Credit(1.0, None, ("r1",))
    assert updates["c0"].step == 1  # c0 ended after c1
    assert join.changes() == []
    assert join.emitted_version("c1") == 2 and join.emitted_version("nope") == 0


def test_step_shift_re_emits() -> None:
    join = RolloutJoin("ro-1", "final_broadcast")
    join.add_call(call("c2", 20))
    join.add_reward(reward("r1", 1.0, 30))
    assert [(u.span_id, u.step, u.version) for u in join.changes()] == [("c2", 0, 1)]
    join.add_call(call("c1", 10))  # an earlier turn arrives late: c2 becomes turn 1
    assert [(u.span_id, u.step, u.version) for u in join.changes()] == [("c1", 0, 1), ("c2", 1, 2)]


def test_explicit_reward_waits_for_its_call() -> None:
    join = RolloutJoin("ro-1", "first_occurrence")
    join.add_reward(reward("judge", 0.5, 5, span_id="c1"))
    assert join.changes() == []
    join.add_call(call("c1", 10))
    [update] = join.changes()
    assert update.span_id == "c1" and update.credit == Credit(0.5, None, ("judge",))


def test_set_strategy_re_emits_what_changed() -> None:
    join = RolloutJoin("ro-1", "first_occurrence")
    for c in (call("c1", 10), call("c2", 20)):
        join.add_call(c)
    join.add_reward(reward("r1", 4.0, 30))
    assert [u.span_id for u in join.changes()] == ["c2"]
    join.set_strategy(CreditAssignment.DISCOUNTED, 0.5)
    assert [(u.span_id, u.version, u.credit and u.credit.reward) for u in join.changes()] == [("c1", 1, 2.0)]
    join.set_strategy("final_broadcast")
    assert join.discount == 0.5 and join.strategy is CreditAssignment.FINAL_BROADCAST
    assert [(u.span_id, u.version, u.credit and u.credit.reward) for u in join.changes()] == [("c1", 2, 4.0)]
    with pytest.raises(ValueError, match="first_occurrence"):
        join.set_strategy("nope")
    with pytest.raises(ValueError, match="discount"):
        RolloutJoin("ro-1", "discounted", discount=-0.1)


def test_round_trip_continues_versions() -> None:
    join = RolloutJoin("ro-1", "discounted", 0.5)
    join.add_call(call("c1", 10, response_id="resp-1"))
    join.add_reward(reward("r1", 0.1, 30, feedback="fb"))
    assert [u.version for u in join.changes()] == [1]
    restored = restart(join)
    assert restored.calls == join.calls and restored.rewards == join.rewards
    assert restored.changes() == []
    restored.add_reward(reward("r2", 0.2, 40))
    [update] = restored.changes()
    assert update.version == 2 and update.credit == Credit(0.2, None, ("r2",))
    with pytest.raises(ValueError, match="format"):
        RolloutJoin.from_dict({**join.to_dict(), "format": 99})


def test_conflicting_duplicates_resolve_independently_of_order() -> None:
    one, other = call("c1", 10), call("c1", 12)
    a, b = RolloutJoin("ro-1", "final_broadcast"), RolloutJoin("ro-1", "final_broadcast")
    assert a.add_call(one) and b.add_call(other)
    assert a.add_call(other) != b.add_call(one)  # exactly one of them replaces its held copy
    assert a.to_dict() == b.to_dict()


def test_last_activity_is_the_latest_event_time() -> None:
    join = RolloutJoin("ro-1", "final_broadcast")
    assert join.last_activity_us is None
    join.add_call(call("c1", 10))
    join.add_reward(reward("r1", 1.0, 7))
    assert join.last_activity_us == 10


# -- property: streaming converges to the batch ------------------------------------------------


def run_stream(
    rollout_id: str,
    strategy: CreditAssignment,
    discount: float,
    events: list[Event],
    data: st.DataObject,
) -> tuple[dict[str, TripletUpdate], RolloutJoin]:
    """Feed events one at a time, with changes() after each and restarts in between; check that
    versions go up by one per triplet, and return the latest update per triplet."""
    join = RolloutJoin(rollout_id, strategy, discount)
    latest: dict[str, TripletUpdate] = {}
    for event in events:
        if data.draw(st.integers(0, 3)) == 0:
            join = restart(join)
        if data.draw(st.integers(0, 5)) == 0:  # a strategy seen mid-stream, corrected later
            join.set_strategy(data.draw(st.sampled_from(list(CreditAssignment))), 0.7)
        feed(join, event)
        for update in join.changes():
            previous = latest.get(update.triplet_id)
            assert update.version == (previous.version + 1 if previous else 1)
            assert update.triplet_id == triplet_id_for(rollout_id, update.span_id)
            latest[update.triplet_id] = update
    join.set_strategy(strategy, discount)
    for update in join.changes():
        previous = latest.get(update.triplet_id)
        assert update.version == (previous.version + 1 if previous else 1)
        latest[update.triplet_id] = update
    assert join.changes() == []
    return latest, join


def final_contents(latest: dict[str, TripletUpdate]) -> dict[str, tuple[object, ...]]:
    return {
        u.span_id: (*fingerprint({u.span_id: u.credit})[u.span_id], u.attempt_id, u.step)
        for u in latest.values()
        if u.credit is not None
    }


@settings(max_examples=300, deadline=None)
@given(
    events=rollout_events(),
    strategy=st.sampled_from(list(CreditAssignment)),
    discount=st.sampled_from([0.5, 0.9, 1.0]),
    data=st.data(),
)
def test_stream_converges_to_batch_in_any_order(
    events: tuple[list[LlmCall], list[RewardEvent]],
    strategy: CreditAssignment,
    discount: float,
    data: st.DataObject,
) -> None:
    calls, rewards = events
    distinct: list[Event] = [*calls, *rewards]
    credits = assign_credit(strategy, calls, rewards, discount=discount)
    steps = {
        c.span_id: sorted(
            (x for x in calls if x.attempt_id == c.attempt_id),
            key=lambda x: (x.end_us, x.sequence_id, x.span_id),
        ).index(c)
        for c in calls
    }
    by_span = {c.span_id: c for c in calls}
    expected = {
        span_id: (*fingerprint({span_id: credit})[span_id], by_span[span_id].attempt_id, steps[span_id])
        for span_id, credit in credits.items()
    }

    results = []
    for _ in range(2):
        extras = data.draw(st.lists(st.sampled_from(distinct), max_size=4)) if distinct else []
        order = data.draw(st.permutations(distinct + extras))
        latest, join = run_stream("ro-1", strategy, discount, order, data)
        assert final_contents(latest) == expected
        assert {u.span_id for u in latest.values()} <= by_span.keys()
        assert join.calls == tuple(sorted(calls, key=lambda c: c.span_id))
        results.append((final_contents(latest), join.to_dict()["calls"], join.to_dict()["rewards"]))
    assert results[0] == results[1]
