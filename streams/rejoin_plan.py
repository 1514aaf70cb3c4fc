"""The pure half of ``agentstream rejoin`` (see :mod:`.rejoin`): from one rollout's records to its
triplets, and from those and the triplets already in the topic to the new versions to emit.

Nothing here touches Kafka: :mod:`.rejoin` reads the log and writes what :func:`plan_versions` says.
Triplets are built by :func:`.calls.triplet_from_update`, as the live joiner builds them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agentstream.schemas import Triplet

from .calls import call_content, strategy_for, triplet_from_update
from .join import RolloutJoin, is_evaluation_span, llm_call_of, reward_event_of

__all__ = [
    "ExistingTriplet",
    "Fingerprint",
    "RolloutLog",
    "content_fingerprint",
    "derive_triplets",
    "parse_when",
    "plan_versions",
    "strategy_for",
    "triplet_from_update",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_when(text: str, now: int) -> int:
    """A point in time in µs: an ISO 8601 time (UTC unless it says otherwise) or a duration before
    ``now`` (µs) such as ``90m``, ``2h``, ``7d``, ``1w``. ``ValueError`` names the accepted forms."""
    match = _DURATION.match(text)
    if match:
        return now - int(float(match.group(1)) * _UNIT_SECONDS[match.group(2)] * 1_000_000)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO time (2026-01-31T12:00:00Z) nor a duration (30m, 2h, 7d, 1w)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1_000_000)


@dataclass
class RolloutLog:
    """One rollout's spans and rewards (decoded datums) as read from the log, in log order."""

    rollout_id: str
    #: Kafka record time (ms) of its first record read
    first_ms: int
    #: ``(record ms, topic rank, partition, offset, "span" | "reward", datum)``
    records: list[tuple[int, int, int, int, str, dict[str, Any]]] = field(default_factory=list)

    def add(
        self, at_ms: int, rank: int, partition: int, offset: int, kind: str, datum: dict[str, Any]
    ) -> None:
        self.first_ms = min(self.first_ms, at_ms)
        self.records.append((at_ms, rank, partition, offset, kind, datum))


def derive_triplets(
    log: RolloutLog,
    strategy: str,
    discount: float,
    *,
    horizon_us: int,
    task_type: str = "",
    mode: str = "",
    emit_uncredited: bool = True,
    train_on_judge_calls: bool = False,
) -> list[Triplet]:
    """The triplets the live joiner would hold for this rollout once it has seen ``log`` (versions
    are placeholders: :func:`plan_versions` numbers them), fed as the joiner feeds them: LLM calls,
    the links of the other spans (judge calls), and rewards, in record-time order (how the worker
    met them, so the late-reward rule drops the same rewards)."""
    join = RolloutJoin(
        log.rollout_id,
        strategy,
        discount,
        emit_uncredited=emit_uncredited,
        train_on_judge_calls=train_on_judge_calls,
    )
    contents: dict[str, dict[str, Any]] = {}
    for _, _, _, _, kind, datum in sorted(log.records, key=lambda r: r[:4]):
        if kind == "span":
            if datum["kind"] != "llm":  # its link finds the judge calls below an evaluation
                join.add_span_link(datum["span_id"], datum["parent_span_id"], is_evaluation_span(datum))
                continue
            call = llm_call_of(datum)
            if join.add_call(call):
                contents[call.span_id] = call_content(datum)
            continue
        last_call = max((c.end_us for c in join.calls), default=None)
        if last_call is not None and datum["timestamp"] - last_call > horizon_us:
            continue  # the live joiner drops a reward this late
        join.add_reward(reward_event_of(datum))
    return [
        triplet_from_update(
            log.rollout_id,
            update,
            contents[update.span_id],
            strategy=strategy,
            task_type=task_type,
            mode=mode,
            emitted_at=0,
        )
        for update in join.changes()
    ]


@dataclass(frozen=True, slots=True)
class ExistingTriplet:
    """The latest version of a triplet in the triplets topic and the fingerprint of its content."""

    version: int
    fingerprint: str
    datum: dict[str, Any]


#: fingerprint of a triplet datum's content (everything but ``version`` and ``emitted_at``)
Fingerprint = Callable[[Mapping[str, Any]], str]


def content_fingerprint(encode: Callable[[dict[str, Any]], bytes]) -> Fingerprint:
    """Fingerprints from the triplet's Avro encoding with ``version`` and ``emitted_at`` zeroed: every
    field counts, floats bit for bit as stored (float32 logprobs included)."""

    def fingerprint(datum: Mapping[str, Any]) -> str:
        body = encode({**datum, "version": 0, "emitted_at": 0})
        return hashlib.blake2b(body, digest_size=16).hexdigest()

    return fingerprint


def _retracted(datum: Mapping[str, Any]) -> dict[str, Any]:
    """The retraction of a triplet, as the live joiner writes one: its content, no credit."""
    return {**datum, "reward": None, "reward_dimensions": {}, "feedback": None, "retracted": True}


def plan_versions(
    derived: Iterable[Triplet],
    existing: Mapping[str, ExistingTriplet],
    fingerprint: Fingerprint,
    emitted_at: int,
) -> tuple[list[dict[str, Any]], int, int]:
    """The triplet datums to emit for one rollout, with the number of them that are retractions and
    the number left unchanged.

    ``existing`` holds the rollout's triplets as the topic has them. A derived triplet is emitted
    when its id is new (version 1) or its content differs (last version + 1); an existing triplet
    that is no longer derived is retracted (``retracted`` set, no credit) unless it already is.
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    unchanged = retracted = 0
    for triplet in derived:
        datum = triplet.to_avro()
        seen.add(triplet.triplet_id)
        before = existing.get(triplet.triplet_id)
        if before is not None and before.fingerprint == fingerprint(datum):
            unchanged += 1
            continue
        version = before.version + 1 if before is not None else 1
        out.append({**datum, "version": version, "emitted_at": emitted_at})
    for triplet_id, before in sorted(existing.items()):
        if triplet_id in seen:
            continue
        retraction = _retracted(before.datum)
        if fingerprint(retraction) == before.fingerprint:
            unchanged += 1
            continue
        out.append({**retraction, "version": before.version + 1, "emitted_at": emitted_at})
        retracted += 1
    return out, retracted, unchanged
