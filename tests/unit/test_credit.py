"""Credit assignment: each strategy on hand-written rollouts, and order independence of the batch."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.schemas.rollout_event import CreditAssignment
from agentstream.streams.credit import (
    Credit,
    LlmCall,
    RewardEvent,
    assign_credit,
    parse_strategy,
    primary_dimension,
)

FO = CreditAssignment.FIRST_OCCURRENCE
FB = CreditAssignment.FINAL_BROADCAST
DC = CreditAssignment.DISCOUNTED


def call(span_id: str, end_us: int, attempt_id: str = "a1", sequence_id: int = 0, **kw: object) -> LlmCall:
    return LlmCall(span_id, attempt_id, sequence_id, start_us=end_us - 5, end_us=end_us, **kw)  # type: ignore[arg-type]


def reward(
    reward_id: str, value: float, timestamp_us: int, attempt_id: str = "a1", **kw: object
) -> RewardEvent:
    return RewardEvent(reward_id, attempt_id, value, timestamp_us, **kw)  # type: ignore[arg-type]


def scalar(value: float, feedback: str | None, reward_ids: tuple[str, ...]) -> Credit:
    """The credit of rewards of the one default dimension ("reward")."""
    return Credit(value, feedback, reward_ids, (("reward", value),))


def values(credits: dict[str, Credit]) -> dict[str, float]:
    return {span_id: credit.reward for span_id, credit in credits.items()}


THREE_CALLS = [call("c1", 10), call("c2", 20), call("c3", 30)]


# -- first_occurrence ---------------------------------------------------------------------------


def test_first_occurrence_goes_to_latest_earlier_call() -> None:
    rewards = [reward("r1", 1.0, 25, feedback="ok"), reward("r2", 2.0, 35)]
    assert assign_credit(FO, THREE_CALLS, rewards) == {
        "c2": scalar(1.0, "ok", ("r1",)),
        "c3": scalar(2.0, None, ("r2",)),
    }


def test_first_occurrence_skips_calls_that_already_have_a_reward() -> None:
    # Both rewards come after every call: the first takes c3, the second the latest free one, c2.
    rewards = [reward("r1", 1.0, 40), reward("r2", 2.0, 41)]
    assert values(assign_credit(FO, THREE_CALLS, rewards)) == {"c3": 1.0, "c2": 2.0}


def test_first_occurrence_adds_to_latest_earlier_call_when_all_are_taken() -> None:
    calls = [call("c1", 10), call("c2", 20)]
    rewards = [
        reward("r2", 2.0, 16, feedback="second"),
        reward("r1", 1.0, 15, feedback="first"),
        reward("r3", 4.0, 17),
    ]
    # Only c1 ended by t=15..17: r1 takes it, r2 and r3 have no free earlier call and add to it.
    assert assign_credit(FO, calls, rewards) == {"c1": scalar(7.0, "first\nsecond", ("r1", "r2", "r3"))}


def test_first_occurrence_reward_before_any_call_is_unassigned() -> None:
    assert assign_credit(FO, THREE_CALLS, [reward("r1", 1.0, 9)]) == {}
    assert assign_credit(FO, [], [reward("r1", 1.0, 100)]) == {}
    # A call ending exactly at the reward's timestamp counts as ended before it.
    assert values(assign_credit(FO, THREE_CALLS, [reward("r1", 1.0, 10)])) == {"c1": 1.0}


def test_first_occurrence_respects_attempts() -> None:
    calls = [call("c1", 10, "a1"), call("c2", 20, "a2")]
    # r1 belongs to a1: c2 (of a2) is later but not its attempt's; r2 names an attempt with no calls.
    rewards = [reward("r1", 1.0, 30, "a1"), reward("r2", 5.0, 30, "a3")]
    assert values(assign_credit(FO, calls, rewards)) == {"c1": 1.0}


# -- explicit targets ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(CreditAssignment))
def test_explicit_span_and_response_targets(strategy: CreditAssignment) -> None:
    calls = [call("c1", 10, response_id="resp-1"), call("c2", 20, "a2", response_id="resp-2")]
    rewards = [
        reward("by-span", 1.0, 0, attempt_id="", span_id="c1"),  # before the call ended: still c1
        reward("by-response", 2.0, 5, attempt_id="a1", response_id="resp-2"),  # attempt_id ignored
        reward("unknown", 4.0, 50, span_id="c9"),  # target not known: unassigned, no fallback
    ]
    assert assign_credit(strategy, calls, rewards) == {
        "c1": scalar(1.0, None, ("by-span",)),
        "c2": scalar(2.0, None, ("by-response",)),
    }
    # The target arriving later picks the reward up.
    later = assign_credit(strategy, [*calls, call("c9", 60)], rewards)
    assert later["c9"] == scalar(4.0, None, ("unknown",))


def test_span_target_takes_precedence_over_response_target() -> None:
    calls = [call("c1", 10, response_id="resp-1"), call("c2", 20)]
    both = reward("r", 1.0, 0, span_id="c2", response_id="resp-1")
    assert values(assign_credit(FO, calls, [both])) == {"c2": 1.0}
    # span_id names no LLM call: the response id still finds one.
    stray = reward("r", 1.0, 0, span_id="tool-span", response_id="resp-1")
    assert values(assign_credit(FO, calls, [stray])) == {"c1": 1.0}


def test_explicit_rewards_do_not_take_calls_in_first_occurrence() -> None:
    rewards = [
        reward("judge", 0.5, 31, span_id="c3", feedback="judge"),
        reward("r1", 1.0, 40, feedback="rule"),
    ]
    # The explicit reward does not mark c3 taken, so r1 still goes to c3 and adds to it.
    assert assign_credit(FO, THREE_CALLS, rewards) == {"c3": scalar(1.5, "judge\nrule", ("judge", "r1"))}
    # Feedback follows reward order, whichever kind of reward comes first.
    late_judge = [
        reward("judge", 0.5, 45, span_id="c3", feedback="judge"),
        reward("r1", 1.0, 40, feedback="rule"),
    ]
    assert assign_credit(FO, THREE_CALLS, late_judge)["c3"].feedback == "rule\njudge"


# -- final_broadcast / discounted ---------------------------------------------------------------


def test_final_broadcast_gives_final_reward_to_every_call() -> None:
    rewards = [
        reward("early", 9.0, 15),
        reward("final", 3.0, 40, feedback="done"),
        reward("judge", 0.25, 1, span_id="c1", feedback="nice"),
    ]
    assert assign_credit(FB, THREE_CALLS, rewards) == {
        # reward order puts the judge (t=1) before the final reward (t=40)
        "c1": scalar(3.25, "nice\ndone", ("final", "judge")),
        "c2": scalar(3.0, "done", ("final",)),
        "c3": scalar(3.0, "done", ("final",)),
    }


def test_final_reward_ties_break_by_sequence_then_id() -> None:
    rewards = [reward("b", 1.0, 40, sequence_id=1), reward("a", 2.0, 40, sequence_id=1), reward("z", 4.0, 40)]
    assert values(assign_credit(FB, THREE_CALLS, rewards)) == {"c1": 1.0, "c2": 1.0, "c3": 1.0}


def test_discounted_exact_values() -> None:
    rewards = [reward("final", 8.0, 40)]
    assert values(assign_credit(DC, THREE_CALLS, rewards, discount=0.5)) == {"c1": 2.0, "c2": 4.0, "c3": 8.0}
    # discount 1.0 is final_broadcast
    assert assign_credit(DC, THREE_CALLS, rewards, discount=1.0) == assign_credit(FB, THREE_CALLS, rewards)


def test_turn_order_ties_break_by_sequence_then_span_id() -> None:
    calls = [call("x", 10, sequence_id=2), call("y", 10, sequence_id=1), call("b", 20), call("a", 20)]
    rewards = [reward("final", 16.0, 40)]
    # turns: y (seq 1), x (seq 2), a, b (same end and sequence: by span_id)
    assert values(assign_credit(DC, calls, rewards, discount=0.5)) == {
        "y": 2.0,
        "x": 4.0,
        "a": 8.0,
        "b": 16.0,
    }


@pytest.mark.parametrize("strategy", [FB, DC])
def test_broadcast_is_per_attempt(strategy: CreditAssignment) -> None:
    calls = [call("c1", 10, "a1"), call("c2", 20, "a2")]
    rewards = [reward("r1", 1.0, 30, "a1"), reward("r2", 2.0, 25, "a2")]
    assert values(assign_credit(strategy, calls, rewards)) == {"c1": 1.0, "c2": 2.0}


# -- rollout-level rewards ----------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(CreditAssignment))
def test_rollout_level_reward_picks_latest_attempt(strategy: CreditAssignment) -> None:
    calls = [call("a1-1", 10, "a1"), call("a1-2", 50, "a1"), call("a2-1", 40, "a2"), call("a2-2", 60, "a2")]
    credits = assign_credit(strategy, calls, [reward("r", 1.0, 100, attempt_id="")])
    assert credits and {span_id[:2] for span_id in credits} == {"a2"}
    # Latest calls ending together: the greater span_id decides.
    tied = [call("p", 60, "a1"), call("q", 60, "a2")]
    assert set(assign_credit(strategy, tied, [reward("r", 1.0, 100, attempt_id="")])) == {"q"}


# -- validation, duplicates -----------------------------------------------------------------------


def test_unknown_strategy_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="first_occurrence, final_broadcast, discounted"):
        assign_credit("last_wins", THREE_CALLS, [])
    assert parse_strategy("discounted") is DC


def test_discount_out_of_range() -> None:
    with pytest.raises(ValueError, match="discount"):
        assign_credit(DC, THREE_CALLS, [], discount=1.5)


def test_duplicates_collapse_and_conflicts_resolve_independently_of_order() -> None:
    rewards = [reward("r1", 1.0, 40), reward("r1", 1.0, 40)]
    assert values(assign_credit(FO, THREE_CALLS + THREE_CALLS, rewards)) == {"c3": 1.0}
    one, other = reward("r1", 1.0, 40), reward("r1", 3.0, 40)
    assert assign_credit(FB, THREE_CALLS, [one, other]) == assign_credit(FB, THREE_CALLS, [other, one])
    moved = call("c3", 5)
    assert assign_credit(FO, [*THREE_CALLS, moved], [one]) == assign_credit(FO, [moved, *THREE_CALLS], [one])


# -- reward dimensions -----------------------------------------------------------------------------


def test_dimensions_are_credited_apart_never_summed() -> None:
    """Two dimensions of 0.6 at the end of a rollout: each is its own, never 1.2 on the last call."""
    rewards = [reward("w1", 0.6, 40, name="format"), reward("w2", 0.6, 40, name="correctness")]
    for strategy in CreditAssignment:
        credits = assign_credit(strategy, [call("c1", 10)], rewards)
        assert credits["c1"].reward == 0.6 and credits["c1"].by_dimension == {
            "correctness": 0.6,
            "format": 0.6,
        }
    # first_occurrence, per dimension: each dimension's reward goes to the last call, none moves back
    credits = assign_credit(FO, THREE_CALLS, rewards)
    assert list(credits) == ["c3"] and credits["c3"].dimensions == (("correctness", 0.6), ("format", 0.6))
    assert credits["c3"].reward_ids == ("w1", "w2")


def test_same_named_rewards_keep_the_rules_within_their_dimension() -> None:
    rewards = [
        reward("a", 1.0, 40, name="reward"),
        reward("b", 2.0, 41, name="reward"),
        reward("c", 5.0, 42, name="style"),
    ]
    credits = assign_credit(FO, THREE_CALLS, rewards)
    assert credits["c3"].by_dimension == {"reward": 1.0, "style": 5.0} and credits["c3"].reward == 1.0
    assert credits["c2"].by_dimension == {"reward": 2.0} and credits["c2"].reward == 2.0


def test_primary_dimension_is_reward_else_the_first_rewards_name() -> None:
    style, accuracy = reward("s", 1.0, 5, name="style"), reward("a", 1.0, 40, name="accuracy")
    assert primary_dimension([style, reward("r", 1.0, 50), accuracy]) == "reward"
    # the first in reward order (event time), whatever the order they came in
    assert primary_dimension([style, accuracy]) == primary_dimension([accuracy, style]) == "style"
    tie = reward("a0", 1.0, 5, name="accuracy")  # same time: the reward id decides
    assert primary_dimension([style, tie]) == primary_dimension([tie, style]) == "accuracy"
    assert primary_dimension([]) is None
    # a call credited in other dimensions only has no scalar reward
    rewards = [reward("a", 1.0, 4, name="accuracy"), reward("b", 2.0, 5, name="style", span_id="c1")]
    credits = assign_credit(FB, [call("c1", 10), call("c2", 20)], rewards)
    assert credits["c1"] == Credit(1.0, None, ("a", "b"), (("accuracy", 1.0), ("style", 2.0)))
    assert assign_credit(FO, [call("c1", 10), call("c2", 20)], rewards)["c1"].reward is None


# -- property: the batch depends on the sets only --------------------------------------------------

ATTEMPTS = ("a1", "a2", "a3")
SPAN_IDS = tuple(f"s{i}" for i in range(6))
RESPONSE_IDS = ("resp-0", "resp-1", "resp-shared", "resp-none")
DIMENSIONS = ("reward", "reward", "format", "accuracy")


@st.composite
def rollout_events(draw: st.DrawFn) -> tuple[list[LlmCall], list[RewardEvent]]:
    """One rollout's distinct calls and rewards; small time ranges so ties are common."""
    attempts = ATTEMPTS[: draw(st.integers(1, 3))]
    n_calls = draw(st.integers(0, 6))
    calls = []
    for span_id in SPAN_IDS[:n_calls]:
        end_us = draw(st.integers(0, 40))
        calls.append(
            LlmCall(
                span_id=span_id,
                attempt_id=draw(st.sampled_from(attempts)),
                sequence_id=draw(st.integers(0, 2)),
                start_us=end_us - draw(st.integers(0, 10)),
                end_us=end_us,
                response_id=draw(st.none() | st.sampled_from(RESPONSE_IDS[:3])),
            )
        )
    rewards = []
    for i in range(draw(st.integers(0, 5))):
        explicit = draw(st.sampled_from(["none", "none", "span", "response"]))
        rewards.append(
            RewardEvent(
                reward_id=f"r{i}",
                attempt_id=draw(st.sampled_from([*attempts, "", ""])),
                value=draw(
                    st.sampled_from([1.0, -0.0, 0.1, 0.3])
                    | st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
                ),
                timestamp_us=draw(st.integers(0, 50)),
                sequence_id=draw(st.integers(0, 2)),
                span_id=draw(st.sampled_from([*SPAN_IDS, "tool"])) if explicit == "span" else None,
                response_id=draw(st.sampled_from(RESPONSE_IDS)) if explicit == "response" else None,
                feedback=draw(st.none() | st.sampled_from(["good", "bad", ""])),
                name=draw(st.sampled_from(DIMENSIONS)),
            )
        )
    return calls, rewards


def fingerprint(credits: dict[str, Credit]) -> dict[str, tuple[object, ...]]:
    """Credits with the floats as ``repr``, so equality means bit-identical (and -0.0 != 0.0)."""
    return {
        k: (repr(c.reward), c.feedback, c.reward_ids, tuple((n, repr(v)) for n, v in c.dimensions))
        for k, c in credits.items()
    }


@settings(max_examples=300, deadline=None)
@given(
    events=rollout_events(),
    strategy=st.sampled_from(list(CreditAssignment)),
    discount=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
    seed=st.randoms(use_true_random=False),
)
def test_batch_is_order_independent(
    events: tuple[list[LlmCall], list[RewardEvent]],
    strategy: CreditAssignment,
    discount: float,
    seed: random.Random,
) -> None:
    calls, rewards = events
    expected = fingerprint(assign_credit(strategy, calls, rewards, discount=discount))
    shuffled_calls = calls + [seed.choice(calls) for _ in range(len(calls) // 2)]
    shuffled_rewards = rewards + [seed.choice(rewards) for _ in range(len(rewards) // 2)]
    seed.shuffle(shuffled_calls)
    seed.shuffle(shuffled_rewards)
    got = assign_credit(strategy, iter(shuffled_calls), iter(shuffled_rewards), discount=discount)
    assert fingerprint(got) == expected
    assert set(got) <= {c.span_id for c in calls}
    for credit in got.values():
        assert credit.reward_ids == tuple(sorted(set(credit.reward_ids)))
