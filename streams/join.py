"""``RolloutJoin``: the per-rollout state of the real-time triplet joiner, free of Kafka and Faust.

The joiner feeds a rollout's LLM calls and rewards into its ``RolloutJoin`` in whatever order they
arrive (duplicates included) and asks for ``changes()`` after each: credit is recomputed from the
whole set of events with ``assign_credit`` and compared with what was last emitted per call, so
every emitted triplet converges to the batch result. Each triplet id carries a version that grows
by one per emitted change; a call that loses its credit is retracted (``credit=None``).

Only a fingerprint of each emitted triplet is kept, and ``to_dict``/``from_dict`` turn the state
into JSON-able data and back exactly, so a restarted worker continues the version sequence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from agentstream.schemas.rollout_event import CreditAssignment

from .credit import Credit, LlmCall, RewardEvent, assign_credit, group_turns, parse_strategy

__all__ = ["RolloutJoin", "TripletUpdate", "triplet_id_for"]

_FORMAT = 1


def triplet_id_for(rollout_id: str, span_id: str) -> str:
    """The deterministic id of the triplet of LLM call ``span_id`` in rollout ``rollout_id``."""
    return "tr-" + hashlib.sha1(f"{rollout_id}/{span_id}".encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class TripletUpdate:
    """A new version of one triplet: its credit now, or ``credit=None`` for a retraction."""

    triplet_id: str
    span_id: str
    attempt_id: str
    version: int
    step: int  # turn index of the call within its attempt
    credit: Credit | None


def _fingerprint(attempt_id: str, step: int, credit: Credit) -> str:
    # repr() of the float keeps every bit, so any change of value re-emits.
    content = [attempt_id, step, repr(credit.reward), credit.feedback, list(credit.reward_ids)]
    return hashlib.blake2b(json.dumps(content).encode(), digest_size=12).hexdigest()


class RolloutJoin:
    """Per-rollout state of the triplet joiner: LLM calls and rewards seen so far, and what was emitted."""

    def __init__(self, rollout_id: str, strategy: CreditAssignment | str, discount: float = 0.9) -> None:
        self.rollout_id = rollout_id
        self._strategy = parse_strategy(strategy)
        self._discount = _check_discount(discount)
        self._calls: dict[str, LlmCall] = {}
        self._rewards: dict[str, RewardEvent] = {}
        # span_id -> (last emitted version, fingerprint of its content or None once retracted)
        self._emitted: dict[str, tuple[int, str | None]] = {}

    # -- events ---------------------------------------------------------------------------------

    def add_call(self, call: LlmCall) -> bool:
        """Record an LLM call; ``False`` if its ``span_id`` was already known (nothing changed).

        A differing copy with a known ``span_id`` replaces the held one only if its ``repr`` is
        smaller (then ``True``), the same tie-break ``assign_credit`` uses, so arrival order never
        decides which copy counts.
        """
        return _put(self._calls, call.span_id, call)

    def add_reward(self, reward: RewardEvent) -> bool:
        """Record a reward; ``False`` if its ``reward_id`` was already known (same tie-break as calls)."""
        return _put(self._rewards, reward.reward_id, reward)

    def set_strategy(self, strategy: CreditAssignment | str, discount: float | None = None) -> None:
        """Switch the credit assignment (e.g. once the task type is learned); ``discount=None`` keeps
        the current one. The next ``changes()`` re-emits whatever this changes."""
        self._strategy = parse_strategy(strategy)
        if discount is not None:
            self._discount = _check_discount(discount)

    # -- output ---------------------------------------------------------------------------------

    def changes(self) -> list[TripletUpdate]:
        """Updates for every triplet whose content changed since it was last emitted, ordered by
        ``(attempt_id, step, span_id)``; marks them emitted. ``[]`` if nothing changed."""
        credits, steps = self._credits_and_steps()
        updates: list[TripletUpdate] = []
        for span_id in sorted(credits.keys() | self._emitted.keys()):
            credit = credits.get(span_id)
            version, last = self._emitted.get(span_id, (0, None))
            call = self._calls[span_id]
            step = steps[span_id]
            fingerprint = _fingerprint(call.attempt_id, step, credit) if credit is not None else None
            if fingerprint == last:  # unchanged, or never credited / already retracted
                continue
            self._emitted[span_id] = (version + 1, fingerprint)
            updates.append(
                TripletUpdate(
                    triplet_id=triplet_id_for(self.rollout_id, span_id),
                    span_id=span_id,
                    attempt_id=call.attempt_id,
                    version=version + 1,
                    step=step,
                    credit=credit,
                )
            )
        updates.sort(key=lambda u: (u.attempt_id, u.step, u.span_id))
        return updates

    def emitted(self) -> list[TripletUpdate]:
        """The last emitted version of every triplet, as it was emitted (retractions included).

        Re-sending these is how a worker makes good on outputs that a crash may have lost after
        its state was saved: the event is then a duplicate and ``changes()`` has nothing new.
        """
        credits, steps = self._credits_and_steps()
        out = []
        for span_id, (version, fingerprint) in sorted(self._emitted.items()):
            call = self._calls[span_id]
            credit = credits.get(span_id) if fingerprint is not None else None
            out.append(
                TripletUpdate(
                    triplet_id_for(self.rollout_id, span_id),
                    span_id,
                    call.attempt_id,
                    version,
                    steps[span_id],
                    credit,
                )
            )
        return out

    def _credits_and_steps(self) -> tuple[dict[str, Credit], dict[str, int]]:
        credits = assign_credit(
            self._strategy, self._calls.values(), self._rewards.values(), discount=self._discount
        )
        steps = {
            call.span_id: step
            for attempt_calls in group_turns(self._calls.values()).values()
            for step, call in enumerate(attempt_calls)
        }
        return credits, steps

    # -- inspection -----------------------------------------------------------------------------

    @property
    def strategy(self) -> CreditAssignment:
        return self._strategy

    @property
    def discount(self) -> float:
        return self._discount

    @property
    def calls(self) -> tuple[LlmCall, ...]:
        """The known calls, by ``span_id``."""
        return tuple(self._calls[k] for k in sorted(self._calls))

    @property
    def rewards(self) -> tuple[RewardEvent, ...]:
        """The known rewards, by ``reward_id``."""
        return tuple(self._rewards[k] for k in sorted(self._rewards))

    def call(self, span_id: str) -> LlmCall | None:
        return self._calls.get(span_id)

    def emitted_version(self, span_id: str) -> int:
        """The last emitted version of the call's triplet; 0 if none was emitted."""
        return self._emitted.get(span_id, (0, None))[0]

    @property
    def last_activity_us(self) -> int | None:
        """The latest event time seen (call end or reward timestamp), for expiring idle state;
        event time rather than wall-clock time so replays expire the same way."""
        times = [c.end_us for c in self._calls.values()] + [r.timestamp_us for r in self._rewards.values()]
        return max(times, default=None)

    # -- persistence ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole state as JSON-able data (``json.dumps`` works); ``from_dict`` restores it exactly."""
        return {
            "format": _FORMAT,
            "rollout_id": self.rollout_id,
            "strategy": self._strategy.value,
            "discount": self._discount,
            "calls": [asdict(call) for call in self.calls],
            "rewards": [asdict(reward) for reward in self.rewards],
            "emitted": {k: [v, fp] for k, (v, fp) in sorted(self._emitted.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutJoin:
        """The state saved by ``to_dict`` (possibly after a JSON round trip)."""
        if data.get("format") != _FORMAT:
            raise ValueError(f"unsupported RolloutJoin state format {data.get('format')!r}")
        join = cls(data["rollout_id"], data["strategy"], data["discount"])
        for raw in data["calls"]:
            call = LlmCall(**raw)
            join._calls[call.span_id] = call
        for raw in data["rewards"]:
            reward = RewardEvent(**raw)
            join._rewards[reward.reward_id] = reward
        join._emitted = {k: (int(v), fp) for k, (v, fp) in data["emitted"].items()}
        return join

    def __repr__(self) -> str:
        return (
            f"RolloutJoin({self.rollout_id!r}, {self._strategy.value!r}, calls={len(self._calls)}, "
            f"rewards={len(self._rewards)}, emitted={len(self._emitted)})"
        )


def _put(held: dict[str, Any], key: str, item: Any) -> bool:
    current = held.get(key)
    if current is not None and (current == item or repr(current) <= repr(item)):
        return False
    held[key] = item
    return True


def _check_discount(discount: float) -> float:
    discount = float(discount)
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be within [0, 1], got {discount!r}")
    return discount
