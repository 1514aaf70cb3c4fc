"""Credit assignment: which LLM calls of a rollout get which rewards.

Pure functions over the metadata of a rollout's LLM calls (``LlmCall``) and its rewards
(``RewardEvent``); the triplet joiner recomputes them whenever an event arrives, so the result
must depend only on the *sets* of calls and rewards, never on the order they arrived in.

Rules
-----
Identity and order
    Calls are identified by ``span_id`` and rewards by ``reward_id``; duplicates collapse to one.
    Should two copies with one id differ, the copy with the smallest ``repr`` wins, so even a
    conflicting re-delivery cannot make the result depend on arrival order. Rewards are taken in
    *reward order* ``(timestamp_us, sequence_id, reward_id)``. Within an attempt, calls are in
    *turn order* ``(end_us, sequence_id, span_id)``; a call's position in it is its turn (step).

Attempt scoping
    A reward with an ``attempt_id`` applies to the calls of that attempt. A reward with
    ``attempt_id == ""`` targets the rollout, and applies to its most recent attempt: the attempt
    of the call with the greatest ``(end_us, span_id)`` among all calls. A reward whose attempt
    has no known call yet is unassigned.

Explicit targets (every strategy)
    A reward with a (non-empty) ``span_id`` or ``response_id`` is *explicit*: it goes to the call
    with that ``span_id``, else to the call with that ``response_id`` (the first in turn order
    should several share it), whatever its ``attempt_id``. If no known call matches it stays
    unassigned until one does; it never falls back to the strategy. Explicit rewards add to
    whatever the strategy gives their call and take no part in the strategy itself.

``first_occurrence``
    Each non-explicit reward, in reward order, goes to the latest call (in turn order) of its
    attempt with ``end_us <= timestamp_us`` that no earlier non-explicit reward went to. If all
    those calls already have one, it is added to the latest of them. If no call of the attempt
    ended by the reward's timestamp, it is unassigned.

``final_broadcast``
    The *final reward* of an attempt is its non-explicit reward that is last in reward order;
    every call of the attempt gets its value. The attempt's other non-explicit rewards are unused.

``discounted``
    The final reward as above; the call at turn ``k`` of ``n`` (0-based) gets
    ``value * discount ** (n - 1 - k)``: the last call gets the full value.

Reward dimensions
    Rewards are grouped by ``name`` (a *dimension*: correctness, format, ...) and every rule above
    (explicit targets included) is applied to each dimension on its own, so two dimensions never
    add up, and one dimension's reward never takes a call from another's. The rollout's *primary*
    dimension is the one named ``"reward"`` (the SDK's default name) if any of its rewards has that
    name, else the name of its first reward in reward order (event time, never arrival order): the
    main judgement usually comes first (a rule at the end of the run; Agent Lightning's primary key is
    its first dimension) and later ones (a business outcome, a human rating) are extra dimensions, so
    the scalar does not change when they arrive. Only a reward stamped earlier than every known one
    (a late reward from the past) can change the primary dimension.

Combining
    Within a dimension a call's value is the sum of its shares (rewards are additive returns), added left to right
    in reward order starting from the first share, so results are bit-identical for any input
    order; nothing is rounded. A call's ``dimensions`` are its value per dimension it got a share
    of; its scalar ``reward`` is the primary dimension's value (``None`` when the call got shares of
    other dimensions only). Its feedback is the non-empty feedback texts of all its rewards (every
    dimension) joined with ``"\\n"`` in reward order (``None`` if there are none); ``reward_ids`` are
    the contributing reward ids, sorted. Calls that got no share are absent from the result.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from agentstream.schemas.rollout_event import CreditAssignment

__all__ = [
    "Credit",
    "LlmCall",
    "RewardEvent",
    "assign_credit",
    "canonical",
    "group_turns",
    "parse_strategy",
    "primary_dimension",
    "reward_order",
    "turn_order",
]


@dataclass(frozen=True, slots=True)
class LlmCall:
    """Metadata of one LLM-call span; its prompt and response are stored elsewhere."""

    span_id: str
    attempt_id: str
    sequence_id: int
    start_us: int
    end_us: int
    response_id: str | None = None
    #: the span's parent, to find out whether the call runs inside an evaluation (see ``.join``)
    parent_span_id: str | None = None
    #: the span itself says it is a judge call (``gen_ai`` attribute ``agentstream.judge``)
    judge: bool = False


@dataclass(frozen=True, slots=True)
class RewardEvent:
    """One reward as credit assignment sees it. ``attempt_id == ""`` targets the whole rollout;
    ``span_id`` / ``response_id`` name an explicit target call."""

    reward_id: str
    attempt_id: str
    value: float
    timestamp_us: int
    sequence_id: int = 0
    span_id: str | None = None
    response_id: str | None = None
    feedback: str | None = None
    name: str = "reward"

    @property
    def is_explicit(self) -> bool:
        """Whether the reward names its target call (and so bypasses the strategy)."""
        return bool(self.span_id) or bool(self.response_id)


@dataclass(frozen=True, slots=True)
class Credit:
    """What one call is credited with: ``reward`` is the primary dimension's value (``None`` when the
    call was credited in other dimensions only), ``dimensions`` every dimension's, sorted by name."""

    reward: float | None
    feedback: str | None
    reward_ids: tuple[str, ...]  # sorted ids of the rewards that contributed
    dimensions: tuple[tuple[str, float], ...] = ()

    @property
    def by_dimension(self) -> dict[str, float]:
        """``dimensions`` as a dict (what the triplet's ``reward_dimensions`` holds)."""
        return dict(self.dimensions)


def primary_dimension(rewards: Iterable[RewardEvent]) -> str | None:
    """The primary reward dimension of ``rewards``: ``"reward"`` if one has that name, else the name
    of the first in reward order; ``None`` for no rewards. Independent of arrival order (see the
    module docstring)."""
    first: RewardEvent | None = None
    for reward in rewards:
        if reward.name == "reward":
            return "reward"
        if first is None or reward_order(reward) < reward_order(first):
            first = reward
    return first.name if first is not None else None


def parse_strategy(strategy: CreditAssignment | str) -> CreditAssignment:
    """The strategy named by ``strategy``; ``ValueError`` (listing the valid names) if unknown."""
    try:
        return CreditAssignment(strategy)
    except ValueError:
        valid = ", ".join(s.value for s in CreditAssignment)
        raise ValueError(f"unknown credit assignment {strategy!r}; expected one of: {valid}") from None


def turn_order(call: LlmCall) -> tuple[int, int, str]:
    """Sort key of calls within an attempt; the position in this order is the call's turn."""
    return (call.end_us, call.sequence_id, call.span_id)


def reward_order(reward: RewardEvent) -> tuple[int, int, str]:
    """Sort key of rewards: which is earlier, which is final, in what order feedback is joined."""
    return (reward.timestamp_us, reward.sequence_id, reward.reward_id)


_T = TypeVar("_T")


def canonical(items: Iterable[_T], key: Callable[[_T], str]) -> dict[str, _T]:
    """Items by id; of several differing items with one id the smallest ``repr`` wins, a choice that
    does not depend on the order they came in (``repr`` of these dataclasses is injective)."""
    chosen: dict[str, _T] = {}
    for item in items:
        ident = key(item)
        held = chosen.get(ident)
        if held is None or (item != held and repr(item) < repr(held)):
            chosen[ident] = item
    return chosen


def group_turns(calls: Iterable[LlmCall]) -> dict[str, list[LlmCall]]:
    """Calls by attempt, each list in turn order. ``calls`` must already be de-duplicated."""
    turns: dict[str, list[LlmCall]] = defaultdict(list)
    for call in calls:
        turns[call.attempt_id].append(call)
    for attempt_calls in turns.values():
        attempt_calls.sort(key=turn_order)
    return dict(turns)


# A share: the reward it comes from and the amount it gives one call.
_Share = tuple[RewardEvent, float]
_Shares = dict[str, list[_Share]]


def assign_credit(
    strategy: CreditAssignment | str,
    calls: Iterable[LlmCall],
    rewards: Iterable[RewardEvent],
    *,
    discount: float = 0.9,
) -> dict[str, Credit]:
    """Credit per ``span_id`` under ``strategy`` (see the module docstring for the rules).

    Calls that get no credit are absent. ``discount`` (0..1) is used by ``discounted`` only.
    """
    mode = parse_strategy(strategy)
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be within [0, 1], got {discount!r}")
    by_span = canonical(calls, lambda c: c.span_id)
    ordered_rewards = sorted(canonical(rewards, lambda r: r.reward_id).values(), key=reward_order)
    turns = group_turns(by_span.values())
    latest_attempt = (
        max(by_span.values(), key=lambda c: (c.end_us, c.span_id)).attempt_id if by_span else None
    )
    by_response: dict[str, LlmCall] = {}
    for attempt_calls in turns.values():
        for call in attempt_calls:
            if call.response_id:
                held = by_response.get(call.response_id)
                if held is None or turn_order(call) < turn_order(held):
                    by_response[call.response_id] = call

    strategy_fn = _STRATEGIES[mode]
    by_dimension: dict[str, _Shares] = {}
    for name in sorted({reward.name for reward in ordered_rewards}):
        shares: _Shares = defaultdict(list)
        scoped: dict[str, list[RewardEvent]] = defaultdict(list)  # attempt -> rewards in reward order
        for reward in ordered_rewards:
            if reward.name != name:
                continue
            if reward.is_explicit:
                target = (by_span.get(reward.span_id) if reward.span_id else None) or (
                    by_response.get(reward.response_id) if reward.response_id else None
                )
                if target is not None:
                    shares[target.span_id].append((reward, reward.value))
                continue
            attempt = reward.attempt_id or latest_attempt
            if attempt is not None and attempt in turns:
                scoped[attempt].append(reward)
        for attempt in sorted(scoped):
            strategy_fn(turns[attempt], scoped[attempt], shares, discount)
        by_dimension[name] = shares
    primary = primary_dimension(ordered_rewards)
    credited = sorted({span_id for shares in by_dimension.values() for span_id in shares})
    return {
        span_id: _combine(
            {name: shares[span_id] for name, shares in by_dimension.items() if span_id in shares}, primary
        )
        for span_id in credited
    }


def _first_occurrence(
    calls: list[LlmCall], rewards: list[RewardEvent], shares: _Shares, discount: float
) -> None:
    ends = [call.end_us for call in calls]  # ascending: turn order sorts by end_us first
    taken: set[str] = set()
    for reward in rewards:
        ended = bisect.bisect_right(ends, reward.timestamp_us)
        if ended == 0:
            continue
        earlier = calls[:ended]
        target = next((c for c in reversed(earlier) if c.span_id not in taken), earlier[-1])
        taken.add(target.span_id)
        shares[target.span_id].append((reward, reward.value))


def _final_broadcast(
    calls: list[LlmCall], rewards: list[RewardEvent], shares: _Shares, discount: float
) -> None:
    final = rewards[-1]
    for call in calls:
        shares[call.span_id].append((final, final.value))


def _discounted(calls: list[LlmCall], rewards: list[RewardEvent], shares: _Shares, discount: float) -> None:
    final = rewards[-1]
    n = len(calls)
    for k, call in enumerate(calls):
        shares[call.span_id].append((final, final.value * discount ** (n - 1 - k)))


_STRATEGIES: dict[CreditAssignment, Callable[[list[LlmCall], list[RewardEvent], _Shares, float], None]] = {
    CreditAssignment.FIRST_OCCURRENCE: _first_occurrence,
    CreditAssignment.FINAL_BROADCAST: _final_broadcast,
    CreditAssignment.DISCOUNTED: _discounted,
}


def _combine(by_dimension: dict[str, list[_Share]], primary: str | None) -> Credit:
    values = {name: _total(parts) for name, parts in sorted(by_dimension.items())}
    every = sorted(
        (part for parts in by_dimension.values() for part in parts), key=lambda p: reward_order(p[0])
    )
    feedback = [reward.feedback for reward, _ in every if reward.feedback]
    return Credit(
        reward=values.get(primary) if primary is not None else None,
        feedback="\n".join(feedback) if feedback else None,
        reward_ids=tuple(sorted({reward.reward_id for reward, _ in every})),
        dimensions=tuple(values.items()),
    )


def _total(parts: list[_Share]) -> float:
    parts = sorted(parts, key=lambda part: reward_order(part[0]))
    # Start from the first share rather than 0.0 so a single share keeps its exact bits (-0.0 too).
    total = parts[0][1]
    for _, amount in parts[1:]:
        total += amount
    return total
