"""Triplet windows: which triplets a trainer learns from, and the window of offsets it trained on.

A window's offset ranges and id go into the lineage of the version trained on it
(:meth:`TripletWindow.lineage`), and :func:`window_ends` reads them back: that is how a restarted
trainer knows where its published windows end (see :mod:`.runtime`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from agentstream.schemas import Triplet

if TYPE_CHECKING:
    from agentstream.schemas import ResourceVersion

logger = logging.getLogger(__name__)

__all__ = ["TripletFilter", "TripletWindow", "window_ends"]


@dataclass(frozen=True)
class TripletFilter:
    """Which triplets a trainer learns from.

    ``resource_name`` matches the resource the LLM call was stamped with (a rollout's first
    resource, usually its prompt template), not the resource the trainer publishes.
    """

    resource_name: str | None = None
    task_types: tuple[str, ...] = ()
    modes: tuple[str, ...] = ("train", "prod")
    #: triplets rewarded below this are dropped (``None``: any reward)
    min_reward: float | None = None
    #: drop triplets whose reward has not arrived (yet)
    require_reward: bool = True

    def accepts(self, triplet: Triplet) -> bool:
        if triplet.retracted:  # withdrawn (a judge call, a duplicate capture): never training data
            return False
        if self.resource_name is not None and triplet.resource_name != self.resource_name:
            return False
        if self.task_types and triplet.task_type not in self.task_types:
            return False
        if self.modes and triplet.mode not in self.modes:
            return False
        if triplet.reward is None:
            return not self.require_reward and self.min_reward is None
        return self.min_reward is None or triplet.reward >= self.min_reward

    def describe(self) -> str:
        return orjson.dumps(
            {
                "resource": self.resource_name,
                "task_types": list(self.task_types),
                "modes": list(self.modes),
                "min_reward": self.min_reward,
                "require_reward": self.require_reward,
            },
            option=orjson.OPT_SORT_KEYS,
        ).decode()


@dataclass
class TripletWindow:
    """A closed window: the triplets to train on and the offsets of every record it consumed."""

    topic: str
    group_id: str
    #: partition -> ``(start, end)``, half-open: every record in it was consumed by this window
    ranges: dict[int, tuple[int, int]]
    #: accepted triplets, highest version of each id, in the order they were first seen
    triplets: list[Triplet]
    #: records consumed (accepted, filtered out, older versions and undecodable ones)
    records: int
    closed_by: str
    opened_at: float = field(default_factory=time.time)

    @property
    def window_id(self) -> str:
        """Deterministic: the same offsets of the same topic for the same group give the same id."""
        body = orjson.dumps(
            {
                "topic": self.topic,
                "group": self.group_id,
                "ranges": {str(p): list(r) for p, r in sorted(self.ranges.items())},
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(body).hexdigest()[:16]

    @property
    def time_range(self) -> tuple[int, int]:
        """Creation times (µs) of the oldest and newest triplet."""
        if not self.triplets:
            return (0, 0)
        stamps = [t.created_at for t in self.triplets]
        return (min(stamps), max(stamps))

    def lineage(self) -> dict[str, str]:
        """The window as ``ResourceVersion.lineage`` entries (read back by :func:`window_ends`)."""
        start, end = self.time_range
        return {
            "window.id": self.window_id,
            "window.topic": self.topic,
            "window.group": self.group_id,
            "window.offsets": orjson.dumps(
                {str(p): list(r) for p, r in sorted(self.ranges.items())}
            ).decode(),
            "window.count": str(len(self.triplets)),
            "window.records": str(self.records),
            "window.from_us": str(start),
            "window.to_us": str(end),
            "window.closed_by": self.closed_by,
        }


def window_ends(versions: Iterable[ResourceVersion], topic: str, group_id: str) -> dict[int, int]:
    """Per partition, the end offset of the furthest window these versions were trained on."""
    ends: dict[int, int] = {}
    for version in versions:
        lineage = version.lineage
        if lineage.get("window.topic") != topic or lineage.get("window.group") != group_id:
            continue
        try:
            ranges = orjson.loads(lineage.get("window.offsets", "{}"))
        except orjson.JSONDecodeError:
            logger.warning(
                "%s v%d: unreadable window.offsets in its lineage", version.resource_name, version.version
            )
            continue
        for partition, (_, end) in ranges.items():
            ends[int(partition)] = max(ends.get(int(partition), 0), int(end))
    return ends
