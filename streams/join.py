"""``RolloutJoin``: the per-rollout state of the real-time triplet joiner, free of Kafka and Faust.

The joiner feeds a rollout's LLM calls and rewards into its ``RolloutJoin`` in whatever order they
arrive (duplicates included) and asks for ``changes()`` after each: credit is recomputed from the
whole set of events with ``assign_credit`` and compared with what was last emitted per call, so
every emitted triplet converges to the batch result. Each triplet id carries a version that grows
by one per emitted change.

Which calls give triplets (recomputed at every ``changes()``, so arrival order never matters):

* a *judge* call (an LLM call that grades: its span says so with ``agentstream.judge``, or it runs
  inside a reward / evaluation span, found through ``parent_span_id`` among the rollout's spans) gets
  no credit and gives no triplet, unless ``train_on_judge_calls`` (then one with no reward). Of the
  rollout's other spans only ``span id -> (parent id, is evaluation)`` is kept (``add_span_link``);
* a *duplicate* (the same call captured twice, e.g. by nested instrumentations: the same
  ``gen_ai.response.id`` in the rollout) counts once: the copy first in turn order
  ``(end_us, sequence_id, span_id)``, which for nested captures is the innermost one (it ends
  first, nearest the wire); the others give no triplet and no credit. The kept copy is a judge
  call if any copy is;
* every other call gives a triplet, with ``credit=None`` until credit arrives when
  ``emit_uncredited`` (else only once credited). A triplet that stops being one (its call turned
  out a judge call or a duplicate, or lost its credit without ``emit_uncredited``) is *retracted*:
  a new version with ``retracted=True``, never training data.

What a triplet says of its rollout (the credit strategy, task type and mode, which the rollout's
state may learn after its first calls were joined: another topic) is part of its content: when
``set_strategy`` or ``set_rollout`` changes it, ``changes()`` re-emits every triplet, so the newest
versions say what a batch re-derivation from the final state says (``agentstream rejoin``).

Only a fingerprint of each emitted triplet is kept, and ``to_dict``/``from_dict`` turn the state
into JSON-able data and back exactly, so a restarted worker continues the version sequence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from agentstream.schemas import genai
from agentstream.schemas.rollout_event import CreditAssignment

from .credit import Credit, LlmCall, RewardEvent, assign_credit, group_turns, parse_strategy, turn_order

__all__ = [
    "DUPLICATE",
    "JUDGE",
    "POLICY",
    "RolloutJoin",
    "TripletUpdate",
    "is_evaluation_span",
    "llm_call_of",
    "reward_event_of",
    "triplet_id_for",
]

# 1: before span links, options and retraction flags; 2: before the task type and mode. Both still
# read; their fingerprints leave out what 3 adds, so each triplet of such a state is re-emitted once.
_FORMAT = 3
_READABLE = (1, 2, 3)

#: the fingerprint of a version emitted before the state was lost: no content has it
_UNKNOWN = "unknown"

#: roles of a rollout's LLM calls (:meth:`RolloutJoin.call_roles`)
POLICY = "policy"
JUDGE = "judge"
DUPLICATE = "duplicate"

_TRUE = ("true", "True", "1")


def triplet_id_for(rollout_id: str, span_id: str) -> str:
    """The deterministic id of the triplet of LLM call ``span_id`` in rollout ``rollout_id``."""
    return "tr-" + hashlib.sha1(f"{rollout_id}/{span_id}".encode()).hexdigest()[:24]


def _says_judge(span: Mapping[str, Any]) -> bool:
    attributes = span.get("attributes") or {}
    flag = (span.get("bool_attributes") or {}).get(genai.JUDGE)
    return flag is True or attributes.get(genai.JUDGE) in _TRUE


def is_evaluation_span(span: Mapping[str, Any]) -> bool:
    """Whether a decoded span record grades (a reward or evaluation operation, or a span marked as a
    judge): the LLM calls below it are judge calls."""
    attributes = span.get("attributes") or {}
    return (
        span.get("kind") == "reward"
        or attributes.get(genai.OPERATION_NAME) == genai.OPERATION_EVALUATE
        or _says_judge(span)
    )


def reward_event_of(reward: Mapping[str, Any]) -> RewardEvent:
    """The ``RewardEvent`` of a decoded reward record (what the joiner and the rejoin tool feed)."""
    return RewardEvent(
        reward_id=reward["reward_id"],
        attempt_id=reward["attempt_id"],
        value=float(reward["value"]),
        timestamp_us=reward["timestamp"],
        sequence_id=reward["sequence_id"],
        span_id=reward["span_id"],
        response_id=reward["response_id"],
        feedback=reward["feedback"],
        name=reward["name"],
    )


def llm_call_of(span: Mapping[str, Any]) -> LlmCall:
    """The ``LlmCall`` of a decoded LLM-call span record (what the joiner and the rejoin tool feed)."""
    return LlmCall(
        span_id=span["span_id"],
        attempt_id=span["attempt_id"],
        sequence_id=span["sequence_id"],
        start_us=span["start_time"],
        end_us=span["end_time"],
        response_id=(span.get("attributes") or {}).get(genai.RESPONSE_ID) or None,
        parent_span_id=span.get("parent_span_id") or None,
        judge=is_evaluation_span(span),
    )


@dataclass(frozen=True, slots=True)
class TripletUpdate:
    """A new version of one triplet: its credit now (``None``: no reward yet), or a retraction."""

    triplet_id: str
    span_id: str
    attempt_id: str
    version: int
    step: int  # turn index of the call within its attempt
    credit: Credit | None
    #: the call gives no triplet any more (a judge call, a duplicate, or credit lost): not training data
    retracted: bool = False


def _fingerprint(rollout: list[str], attempt_id: str, step: int, credit: Credit | None) -> str:
    # repr() of the float keeps every bit, so any change of value re-emits.
    content: list[Any] = [*rollout, attempt_id, step]
    if credit is not None:
        content += [
            repr(credit.reward),
            credit.feedback,
            list(credit.reward_ids),
            [[name, repr(value)] for name, value in credit.dimensions],
        ]
    return hashlib.blake2b(json.dumps(content).encode(), digest_size=12).hexdigest()


class RolloutJoin:
    """Per-rollout state of the triplet joiner: LLM calls, rewards and span links seen so far, and
    what was emitted.

    Args:
        rollout_id: the rollout.
        strategy: its credit assignment (see :mod:`.credit`).
        discount: gamma of ``discounted``.
        emit_uncredited: every call gives a triplet, ``credit=None`` until credit arrives (else only
            credited calls do).
        train_on_judge_calls: judge calls give triplets too (never credited).
        task_type, mode: the rollout's, as its triplets say them (``""``: not known yet).
    """

    def __init__(
        self,
        rollout_id: str,
        strategy: CreditAssignment | str,
        discount: float = 0.9,
        *,
        emit_uncredited: bool = True,
        train_on_judge_calls: bool = False,
        task_type: str = "",
        mode: str = "",
    ) -> None:
        self.rollout_id = rollout_id
        self._task_type = task_type
        self._mode = mode
        self._strategy = parse_strategy(strategy)
        self._discount = _check_discount(discount)
        self._emit_uncredited = emit_uncredited
        self._train_on_judges = train_on_judge_calls
        self._calls: dict[str, LlmCall] = {}
        self._rewards: dict[str, RewardEvent] = {}
        # span_id -> (parent span id or "", is evaluation) of the rollout's non-LLM spans
        self._links: dict[str, tuple[str, bool]] = {}
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

    def add_span_link(self, span_id: str, parent_span_id: str | None, evaluation: bool) -> bool:
        """Record a non-LLM span of the rollout: its parent, and whether it grades (a reward or
        evaluation span, see :func:`is_evaluation_span`), so that the LLM calls below it are known as
        judge calls whatever order the spans come in. ``False`` if nothing changed."""
        return _put(self._links, span_id, (parent_span_id or "", bool(evaluation)))

    def set_strategy(self, strategy: CreditAssignment | str, discount: float | None = None) -> None:
        """Switch the credit assignment (e.g. once the task type is learned); ``discount=None`` keeps
        the current one. The next ``changes()`` re-emits whatever this changes."""
        self._strategy = parse_strategy(strategy)
        if discount is not None:
            self._discount = _check_discount(discount)

    def set_rollout(self, *, task_type: str, mode: str) -> None:
        """The rollout's task type and mode as its state now says them (its first calls may be
        joined before its state is known); the next ``changes()`` re-emits every triplet if they
        changed."""
        self._task_type = task_type
        self._mode = mode

    def continue_versions(self, versions: Mapping[str, int]) -> None:
        """Versions the triplets of known calls reached before this state was lost (span id -> last
        version, e.g. read back from what the sink stored): the next change of each is emitted
        above it, and each is emitted again, as what it said then is not known."""
        for span_id, version in versions.items():
            if span_id in self._calls and version > self._emitted.get(span_id, (0, None))[0]:
                self._emitted[span_id] = (version, _UNKNOWN)

    def set_options(
        self, *, emit_uncredited: bool | None = None, train_on_judge_calls: bool | None = None
    ) -> None:
        """Change which calls give triplets (``None`` keeps an option); the next ``changes()``
        emits or retracts what this changes."""
        if emit_uncredited is not None:
            self._emit_uncredited = emit_uncredited
        if train_on_judge_calls is not None:
            self._train_on_judges = train_on_judge_calls

    # -- output ---------------------------------------------------------------------------------

    def changes(self) -> list[TripletUpdate]:
        """Updates for every triplet whose content changed since it was last emitted, ordered by
        ``(attempt_id, step, span_id)``; marks them emitted. ``[]`` if nothing changed."""
        credits, steps, all_steps = self._evaluate()
        rollout = [self._strategy.value, self._task_type, self._mode]
        updates: list[TripletUpdate] = []
        for span_id in sorted(steps.keys() | self._emitted.keys()):
            version, last = self._emitted.get(span_id, (0, None))
            call = self._calls[span_id]
            credit = credits.get(span_id)
            fingerprint = None
            if span_id in steps and (credit is not None or self._emit_uncredited):
                fingerprint = _fingerprint(rollout, call.attempt_id, steps[span_id], credit)
            if fingerprint == last:  # unchanged, or never emitted / already retracted
                continue
            self._emitted[span_id] = (version + 1, fingerprint)
            updates.append(
                TripletUpdate(
                    triplet_id=triplet_id_for(self.rollout_id, span_id),
                    span_id=span_id,
                    attempt_id=call.attempt_id,
                    version=version + 1,
                    step=steps.get(span_id, all_steps[span_id]),
                    credit=credit if fingerprint is not None else None,
                    retracted=fingerprint is None,
                )
            )
        updates.sort(key=lambda u: (u.attempt_id, u.step, u.span_id))
        return updates

    def emitted(self) -> list[TripletUpdate]:
        """The last emitted version of every triplet, as it was emitted (retractions included).

        Re-sending these is how a worker makes good on outputs that a crash may have lost after
        its state was saved: the event is then a duplicate and ``changes()`` has nothing new.
        """
        credits, steps, all_steps = self._evaluate()
        out = []
        for span_id, (version, fingerprint) in sorted(self._emitted.items()):
            if fingerprint == _UNKNOWN:  # not emitted by this state: nothing to make good on
                continue
            call = self._calls[span_id]
            out.append(
                TripletUpdate(
                    triplet_id_for(self.rollout_id, span_id),
                    span_id,
                    call.attempt_id,
                    version,
                    steps.get(span_id, all_steps[span_id]),
                    credits.get(span_id) if fingerprint is not None else None,
                    retracted=fingerprint is None,
                )
            )
        return out

    def call_roles(self) -> dict[str, str]:
        """Every known call's role: ``POLICY`` (credited, gives a triplet), ``JUDGE`` or ``DUPLICATE``
        (see the module docstring), by span id."""
        calls = self._calls
        marks = {span_id for span_id, (_, evaluation) in self._links.items() if evaluation}
        marks.update(span_id for span_id, call in calls.items() if call.judge)
        parents = {span_id: parent for span_id, (parent, _) in self._links.items()}
        parents.update({span_id: call.parent_span_id or "" for span_id, call in calls.items()})
        judged: dict[str, bool] = {}

        def under_evaluation(span_id: str) -> bool:
            path: list[str] = []
            current = span_id
            found = False
            while current and current not in judged:
                if current in marks:
                    found = True
                    break
                if current in path:  # a cycle in bad input: no evaluation above it
                    break
                path.append(current)
                current = parents.get(current, "")
            else:
                found = bool(current) and judged[current]
            for seen in path:
                judged[seen] = found
            return found

        roles = {span_id: JUDGE if under_evaluation(span_id) else POLICY for span_id in sorted(calls)}
        by_response: dict[str, list[LlmCall]] = {}
        for call in calls.values():
            if call.response_id:
                by_response.setdefault(call.response_id, []).append(call)
        for copies in by_response.values():
            if len(copies) < 2:
                continue
            copies.sort(key=turn_order)
            judge = any(roles[c.span_id] == JUDGE for c in copies)
            roles[copies[0].span_id] = JUDGE if judge else POLICY
            for duplicate in copies[1:]:
                roles[duplicate.span_id] = DUPLICATE
        return roles

    def _evaluate(self) -> tuple[dict[str, Credit], dict[str, int], dict[str, int]]:
        """Credit of the policy calls, the step of each call that gives a triplet, and the step of
        every call among all calls of its attempt (for retractions)."""
        roles = self.call_roles()
        policy = [call for call in self._calls.values() if roles[call.span_id] == POLICY]
        credits = assign_credit(self._strategy, policy, self._rewards.values(), discount=self._discount)
        emitting = policy
        if self._train_on_judges:
            emitting = [call for call in self._calls.values() if roles[call.span_id] != DUPLICATE]
        steps = _steps(emitting)
        return credits, steps, _steps(self._calls.values())

    # -- inspection -----------------------------------------------------------------------------

    @property
    def strategy(self) -> CreditAssignment:
        return self._strategy

    @property
    def discount(self) -> float:
        return self._discount

    @property
    def task_type(self) -> str:
        return self._task_type

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def emit_uncredited(self) -> bool:
        return self._emit_uncredited

    @property
    def train_on_judge_calls(self) -> bool:
        return self._train_on_judges

    @property
    def calls(self) -> tuple[LlmCall, ...]:
        """The known calls, by ``span_id``."""
        return tuple(self._calls[k] for k in sorted(self._calls))

    @property
    def rewards(self) -> tuple[RewardEvent, ...]:
        """The known rewards, by ``reward_id``."""
        return tuple(self._rewards[k] for k in sorted(self._rewards))

    @property
    def span_links(self) -> dict[str, tuple[str, bool]]:
        """The known non-LLM spans: span id -> (parent span id or ``""``, is evaluation)."""
        return dict(sorted(self._links.items()))

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
            "emit_uncredited": self._emit_uncredited,
            "train_on_judge_calls": self._train_on_judges,
            "task_type": self._task_type,
            "mode": self._mode,
            "calls": [_call_dict(call) for call in self.calls],
            "rewards": [asdict(reward) for reward in self.rewards],
            "links": {k: [parent, evaluation] for k, (parent, evaluation) in sorted(self._links.items())},
            "emitted": {k: [v, fp] for k, (v, fp) in sorted(self._emitted.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutJoin:
        """The state saved by ``to_dict`` (possibly after a JSON round trip), or by an older version."""
        if data.get("format") not in _READABLE:
            raise ValueError(f"unsupported RolloutJoin state format {data.get('format')!r}")
        join = cls(
            data["rollout_id"],
            data["strategy"],
            data["discount"],
            emit_uncredited=data.get("emit_uncredited", True),
            train_on_judge_calls=data.get("train_on_judge_calls", False),
            task_type=data.get("task_type", ""),
            mode=data.get("mode", ""),
        )
        for raw in data["calls"]:
            call = LlmCall(**raw)
            join._calls[call.span_id] = call
        for raw in data["rewards"]:
            reward = RewardEvent(**raw)
            join._rewards[reward.reward_id] = reward
        join._links = {
            k: (parent, bool(evaluation)) for k, (parent, evaluation) in data.get("links", {}).items()
        }
        join._emitted = {k: (int(v), fp) for k, (v, fp) in data["emitted"].items()}
        return join

    def __repr__(self) -> str:
        return (
            f"RolloutJoin({self.rollout_id!r}, {self._strategy.value!r}, calls={len(self._calls)}, "
            f"rewards={len(self._rewards)}, links={len(self._links)}, emitted={len(self._emitted)})"
        )


def _steps(calls: Any) -> dict[str, int]:
    return {
        call.span_id: step
        for attempt_calls in group_turns(calls).values()
        for step, call in enumerate(attempt_calls)
    }


def _call_dict(call: LlmCall) -> dict[str, Any]:
    # the fields added later are left out when unset: the changelog stays as small as before
    data = asdict(call)
    for key in ("parent_span_id", "judge"):
        if not data[key]:
            del data[key]
    return data


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
