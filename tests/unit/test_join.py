"""``RolloutJoin``: versioned, retractable triplet updates that converge to the batch credit."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.schemas.rollout_event import CreditAssignment
from agentstream.streams.credit import LlmCall, RewardEvent, assign_credit
from agentstream.streams.join import DUPLICATE, JUDGE, POLICY, RolloutJoin, TripletUpdate, triplet_id_for
from tests.unit.test_credit import call, fingerprint, reward, rollout_events, scalar

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
    join = RolloutJoin("ro-1", "final_broadcast", emit_uncredited=False)
    assert join.add_call(call("c1", 10)) and join.add_call(call("c2", 20))
    assert join.changes() == []  # no reward yet: nothing to emit
    assert join.add_reward(reward("r1", 1.0, 30, feedback="ok"))
    credit = scalar(1.0, "ok", ("r1",))
    assert join.changes() == [
        TripletUpdate(triplet_id_for("ro-1", "c1"), "c1", "a1", 1, 0, credit),
        TripletUpdate(triplet_id_for("ro-1", "c2"), "c2", "a1", 1, 1, credit),
    ]
    assert join.changes() == []
    # Duplicates change nothing.
    assert not join.add_call(call("c1", 10)) and not join.add_reward(reward("r1", 1.0, 30, feedback="ok"))
    assert join.changes() == []


def test_moved_reward_is_retracted_from_its_old_call() -> None:
    join = RolloutJoin("ro-1", "first_occurrence", emit_uncredited=False)
    join.add_call(call("c1", 10))
    join.add_reward(reward("r1", 1.0, 15))
    [first] = join.changes()
    assert (first.span_id, first.version, first.credit) == ("c1", 1, scalar(1.0, None, ("r1",)))
    # A late call that ended closer to the reward takes it over; c1 is retracted.
    join.add_call(call("c0", 12))
    updates = {u.span_id: u for u in join.changes()}
    assert updates["c1"].version == 2 and updates["c1"].credit is None and updates["c1"].step == 0
    assert updates["c1"].retracted and not updates["c0"].retracted
    assert updates["c0"].version == 1 and updates["c0"].credit == scalar(1.0, None, ("r1",))
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
    assert update.span_id == "c1" and update.credit == scalar(0.5, None, ("judge",))


def test_set_strategy_re_emits_what_changed() -> None:
    join = RolloutJoin("ro-1", "first_occurrence", emit_uncredited=False)
    for c in (call("c1", 10), call("c2", 20)):
        join.add_call(c)
    join.add_reward(reward("r1", 4.0, 30))
    assert [u.span_id for u in join.changes()] == ["c2"]
    join.set_strategy(CreditAssignment.DISCOUNTED, 0.5)
    # c2 keeps its credit, but its triplet says which strategy credited it: a new version too
    assert [(u.span_id, u.version, u.credit and u.credit.reward) for u in join.changes()] == [
        ("c1", 1, 2.0),
        ("c2", 2, 4.0),
    ]
    join.set_strategy(CreditAssignment.DISCOUNTED, 0.5)
    assert join.changes() == []
    join.set_strategy("final_broadcast")
    assert join.discount == 0.5 and join.strategy is CreditAssignment.FINAL_BROADCAST
    assert [(u.span_id, u.version, u.credit and u.credit.reward) for u in join.changes()] == [
        ("c1", 2, 4.0),
        ("c2", 3, 4.0),
    ]
    with pytest.raises(ValueError, match="first_occurrence"):
        join.set_strategy("nope")
    with pytest.raises(ValueError, match="discount"):
        RolloutJoin("ro-1", "discounted", discount=-0.1)


def test_set_rollout_re_emits_every_triplet_once_the_state_is_known() -> None:
    # the calls were joined before the rollout's state was read (another topic): no task type or mode
    join = RolloutJoin("ro-1", "first_occurrence")
    for c in (call("c1", 10), call("c2", 20)):
        join.add_call(c)
    join.add_reward(reward("r1", 1.0, 30))
    assert [(u.span_id, u.version) for u in join.changes()] == [("c1", 1), ("c2", 1)]
    assert (join.task_type, join.mode) == ("", "")
    join.set_rollout(task_type="support", mode="test")
    updates = join.changes()
    assert [(u.span_id, u.version, u.credit and u.credit.reward) for u in updates] == [
        ("c1", 2, None),
        ("c2", 2, 1.0),
    ]
    assert (join.task_type, join.mode) == ("support", "test")
    join.set_rollout(task_type="support", mode="test")
    assert join.changes() == []
    # a restarted worker keeps them, and so has nothing to re-emit
    again = RolloutJoin.from_dict(json.loads(json.dumps(join.to_dict())))
    assert (again.task_type, again.mode) == ("support", "test") and again.changes() == []


def test_a_state_saved_before_task_type_and_mode_re_emits_each_triplet_once() -> None:
    join = RolloutJoin("ro-1", "first_occurrence")
    join.add_call(call("c1", 10))
    assert [u.version for u in join.changes()] == [1]
    old = join.to_dict()
    del old["task_type"], old["mode"]
    old["format"] = 2
    # format 2's fingerprint of an uncredited call: its attempt and step only
    [(span_id, (version, _))] = old["emitted"].items()
    content = json.dumps([join.calls[0].attempt_id, 0]).encode()
    old["emitted"] = {span_id: [version, hashlib.blake2b(content, digest_size=12).hexdigest()]}
    restored = RolloutJoin.from_dict(old)
    assert (restored.task_type, restored.mode) == ("", "")
    assert [u.version for u in restored.changes()] == [2]
    assert restored.changes() == []


def test_versions_stored_before_the_state_was_lost_are_continued() -> None:
    # the worker lost its state; what it emitted reached version 2 (c1) and 4 (c2, since retracted)
    join = RolloutJoin("ro-1", "first_occurrence", emit_uncredited=False)
    for c in (call("c1", 10), call("c2", 20, judge=True)):
        join.add_call(c)
    join.continue_versions({"c1": 2, "c2": 4, "unknown-call": 7})
    assert join.emitted() == []  # nothing this state sent to make good on
    join.add_reward(reward("r1", 1.0, 30))
    # each is emitted again above what was stored, as what it said is not known: c2 as a retraction
    assert [(u.span_id, u.version, u.retracted) for u in join.changes()] == [
        ("c1", 3, False),
        ("c2", 5, True),
    ]
    assert join.changes() == []
    join.continue_versions({"c1": 1})  # an older version changes nothing
    assert join.emitted_version("c1") == 3 and join.changes() == []


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
    assert update.version == 2 and update.credit == scalar(0.2, None, ("r2",))
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


def test_every_call_gives_a_triplet_without_credit_until_credit_comes() -> None:
    join = RolloutJoin("ro-1", "first_occurrence")
    join.add_call(call("c1", 10))
    [first] = join.changes()
    assert (first.version, first.credit, first.retracted) == (1, None, False)
    join.add_reward(reward("r1", 1.0, 15))
    [second] = join.changes()
    assert (second.version, second.credit, second.retracted) == (2, scalar(1.0, None, ("r1",)), False)
    join.add_call(call("c0", 12))  # takes the reward over: c1 goes back to no reward, not retracted
    updates = {u.span_id: u for u in join.changes()}
    assert updates["c1"].credit is None and not updates["c1"].retracted and updates["c1"].version == 3
    join.set_options(emit_uncredited=False)  # now an uncredited call is no triplet
    [withdrawn] = join.changes()
    assert withdrawn.span_id == "c1" and withdrawn.retracted and withdrawn.version == 4


def test_calls_below_an_evaluation_are_judges_in_any_order() -> None:
    join = RolloutJoin("ro-1", "final_broadcast")
    join.add_call(call("c1", 10))
    join.add_call(call("j1", 20, parent_span_id="step"))
    join.add_reward(reward("r1", 1.0, 30))
    assert {u.span_id: u.credit for u in join.changes()} == {
        "c1": scalar(1.0, None, ("r1",)),
        "j1": scalar(1.0, None, ("r1",)),
    }
    assert join.add_span_link("step", "ev", False) and join.changes() == []
    assert join.add_span_link("ev", None, True)  # the reward span above them
    [retraction] = join.changes()
    assert retraction.span_id == "j1" and retraction.retracted and retraction.credit is None
    assert join.call_roles() == {"c1": POLICY, "j1": JUDGE}
    assert not join.add_span_link("ev", None, True)
    # the broadcast reward now goes to the policy call alone, which was step 0 all along
    assert join.emitted()[0].credit == scalar(1.0, None, ("r1",))
    assert restart(join).call_roles() == join.call_roles()


def test_a_call_marked_as_judge_gets_no_credit_unless_judges_are_trained_on() -> None:
    join = RolloutJoin("ro-1", "final_broadcast", train_on_judge_calls=True)
    join.add_call(call("c1", 10))
    join.add_call(call("j1", 20, judge=True))
    join.add_call(call("j2", 25, parent_span_id="j1"))  # an LLM call inside a judge's call
    join.add_reward(reward("r1", 1.0, 30))
    updates = {u.span_id: u for u in join.changes()}
    assert updates["c1"].credit == scalar(1.0, None, ("r1",)) and updates["c1"].step == 0
    assert updates["j1"].credit is None and not updates["j1"].retracted and updates["j1"].step == 1
    assert updates["j2"].credit is None and updates["j2"].step == 2
    join.set_options(train_on_judge_calls=False)
    assert sorted((u.span_id, u.retracted) for u in join.changes()) == [("j1", True), ("j2", True)]


def test_the_same_call_captured_twice_counts_once() -> None:
    join = RolloutJoin("ro-1", "discounted", 0.5)
    join.add_call(call("outer", 30, response_id="resp-1"))
    join.add_call(call("c0", 5))
    join.add_reward(reward("r1", 1.0, 40))
    assert {u.span_id: u.credit and u.credit.reward for u in join.changes()} == {"outer": 1.0, "c0": 0.5}
    join.add_call(call("inner", 25, response_id="resp-1", parent_span_id="outer"))  # ends first: kept
    updates = {u.span_id: u for u in join.changes()}
    assert updates["outer"].retracted
    assert updates["inner"].credit is not None and updates["inner"].credit.reward == 1.0
    assert updates["inner"].step == 1 and "c0" not in updates  # c0 still one turn before the last
    assert join.call_roles() == {"c0": POLICY, "inner": POLICY, "outer": DUPLICATE}


def test_state_of_the_previous_format_still_loads() -> None:
    old = {
        "format": 1,
        "rollout_id": "ro-1",
        "strategy": "final_broadcast",
        "discount": 0.9,
        "calls": [{"span_id": "c1", "attempt_id": "a1", "sequence_id": 0, "start_us": 5, "end_us": 10,
                   "response_id": None}],
        "rewards": [],
        "emitted": {"c1": [2, None]},
    }  # fmt: skip
    join = RolloutJoin.from_dict(old)
    assert join.emitted_version("c1") == 2 and join.span_links == {} and join.emit_uncredited
    [update] = join.changes()
    assert update.version == 3 and update.credit is None and not update.retracted


# -- property: streaming converges to the batch ------------------------------------------------

#: a non-LLM span: (span id, parent span id, grades)
Link = tuple[str, str | None, bool]
LINK_IDS = ("t0", "t1", "t2")


def feed_any(join: RolloutJoin, event: Event | Link) -> bool:
    if isinstance(event, tuple):
        return join.add_span_link(*event)
    return feed(join, event)


def run_stream(
    rollout_id: str,
    strategy: CreditAssignment,
    discount: float,
    events: list[Event | Link],
    data: st.DataObject,
    **options: bool,
) -> tuple[dict[str, TripletUpdate], RolloutJoin]:
    """Feed events one at a time, with changes() after each and restarts in between; check that
    versions go up by one per triplet, and return the latest update per triplet."""
    join = RolloutJoin(rollout_id, strategy, discount, **options)
    latest: dict[str, TripletUpdate] = {}
    for event in events:
        if data.draw(st.integers(0, 3)) == 0:
            join = restart(join)
        if data.draw(st.integers(0, 5)) == 0:  # a strategy seen mid-stream, corrected later
            join.set_strategy(data.draw(st.sampled_from(list(CreditAssignment))), 0.7)
        feed_any(join, event)
        for update in join.changes():
            previous = latest.get(update.triplet_id)
            assert update.version == (previous.version + 1 if previous else 1)
            assert update.triplet_id == triplet_id_for(rollout_id, update.span_id)
            if update.retracted:  # only what was emitted is retracted, and it carries no credit
                assert update.credit is None and previous is not None and not previous.retracted
            elif not join.emit_uncredited:
                assert update.credit is not None
            latest[update.triplet_id] = update
    join.set_strategy(strategy, discount)
    for update in join.changes():
        previous = latest.get(update.triplet_id)
        assert update.version == (previous.version + 1 if previous else 1)
        latest[update.triplet_id] = update
    assert join.changes() == []
    return latest, join


def final_contents(latest: dict[str, TripletUpdate]) -> dict[str, tuple[object, ...]]:
    """What the newest version of each triplet says; retracted ones are no triplets."""
    return {
        u.span_id: (
            fingerprint({u.span_id: u.credit})[u.span_id] if u.credit is not None else None,
            u.attempt_id,
            u.step,
        )
        for u in latest.values()
        if not u.retracted
    }


def reference_roles(calls: list[LlmCall], links: list[Link]) -> dict[str, str]:
    """Judge and duplicate calls, worked out the plain way (recursion over the parent chain)."""
    parent = {span_id: up for span_id, up, _ in links} | {c.span_id: c.parent_span_id for c in calls}
    grading = {span_id for span_id, _, grades in links if grades} | {c.span_id for c in calls if c.judge}

    def judged(span_id: str | None, seen: frozenset[str]) -> bool:
        if not span_id or span_id in seen:
            return False
        return span_id in grading or judged(parent.get(span_id), seen | {span_id})

    roles = {c.span_id: "judge" if judged(c.span_id, frozenset()) else "policy" for c in calls}
    groups: dict[str, list[LlmCall]] = {}
    for c in calls:
        if c.response_id:
            groups.setdefault(c.response_id, []).append(c)
    for group in groups.values():
        first, *others = sorted(group, key=lambda x: (x.end_us, x.sequence_id, x.span_id))
        if any(roles[c.span_id] == "judge" for c in group):
            roles[first.span_id] = "judge"
        for c in others:
            roles[c.span_id] = "duplicate"
    return roles


@st.composite
def with_links(
    draw: st.DrawFn, events: tuple[list[LlmCall], list[RewardEvent]]
) -> tuple[list[LlmCall], list[Link]]:
    """The calls given parents and judge marks, and non-LLM spans (some grading) they hang under."""
    calls, _ = events
    ids = [*LINK_IDS, *(c.span_id for c in calls)]
    links = [
        (span_id, draw(st.none() | st.sampled_from(ids)), draw(st.booleans()))
        for span_id in LINK_IDS[: draw(st.integers(0, 3))]
    ]
    calls = [
        dataclasses.replace(
            c,
            parent_span_id=draw(st.none() | st.sampled_from(ids)),
            judge=draw(st.integers(0, 5)) == 0,
        )
        for c in calls
    ]
    return calls, links


@settings(max_examples=300, deadline=None)
@given(
    events=rollout_events(),
    strategy=st.sampled_from(list(CreditAssignment)),
    discount=st.sampled_from([0.5, 0.9, 1.0]),
    emit_uncredited=st.booleans(),
    train_on_judge_calls=st.booleans(),
    data=st.data(),
)
def test_stream_converges_to_batch_in_any_order(
    events: tuple[list[LlmCall], list[RewardEvent]],
    strategy: CreditAssignment,
    discount: float,
    emit_uncredited: bool,
    train_on_judge_calls: bool,
    data: st.DataObject,
) -> None:
    _, rewards = events
    calls, links = data.draw(with_links(events))
    roles = reference_roles(calls, links)
    policy = [c for c in calls if roles[c.span_id] == "policy"]
    emitting = [
        c
        for c in calls
        if roles[c.span_id] == "policy" or (train_on_judge_calls and roles[c.span_id] == "judge")
    ]
    credits = assign_credit(strategy, policy, rewards, discount=discount)
    steps = {
        c.span_id: sorted(
            (x for x in emitting if x.attempt_id == c.attempt_id),
            key=lambda x: (x.end_us, x.sequence_id, x.span_id),
        ).index(c)
        for c in emitting
    }
    expected = {
        c.span_id: (
            fingerprint({c.span_id: credits[c.span_id]})[c.span_id] if c.span_id in credits else None,
            c.attempt_id,
            steps[c.span_id],
        )
        for c in emitting
        if c.span_id in credits or emit_uncredited
    }
    options = {"emit_uncredited": emit_uncredited, "train_on_judge_calls": train_on_judge_calls}

    distinct: list[Event | Link] = [*calls, *rewards, *links]
    results = []
    for _ in range(2):
        extras = data.draw(st.lists(st.sampled_from(distinct), max_size=4)) if distinct else []
        order = data.draw(st.permutations(distinct + extras))
        latest, join = run_stream("ro-1", strategy, discount, order, data, **options)
        assert final_contents(latest) == expected
        assert {u.span_id for u in latest.values()} <= {c.span_id for c in calls}
        assert join.calls == tuple(sorted(calls, key=lambda c: c.span_id))
        assert join.call_roles() == roles
        results.append((final_contents(latest), join.to_dict()["calls"], join.to_dict()["rewards"]))
    assert results[0] == results[1]
