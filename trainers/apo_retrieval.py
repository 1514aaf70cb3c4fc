"""APO's "retrieval" proposals: a prompt that retrieves its demonstrations per request, with
retrieval settings from a grid, and the response primed up to where good responses differ."""

from __future__ import annotations

import os
from collections.abc import Sequence

from agentstream.resources.store import ResourceStore
from agentstream.retrieval import DEFAULT_INDEX, RetrievalSettings
from agentstream.schemas import PRODUCTION

from .apo_templates import response_class
from .demonstrations import Example

__all__ = ["RETRIEVAL_KEYS", "grid_entry", "response_prefix", "retrieval_config", "retrieval_unavailable"]

#: The config keys a retrieving prompt carries (kept when other strategies edit it).
RETRIEVAL_KEYS = ("retrieval.", "response_prefix")


def grid_entry(entry: str) -> dict[str, str]:
    """One ``retrieval_grid`` entry (``"k=8,per_outcome=5,instruction=0"``) as its fields."""
    fields: dict[str, str] = {}
    for part in entry.split(","):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in ("k", "per_outcome", "min_reward", "instruction", "index"):
            raise ValueError(
                f"bad retrieval_grid entry {entry!r}: expected k=.., per_outcome=.., min_reward=.., "
                "instruction=0|1, index=bm25|minilm"
            )
        fields[name.strip()] = value.strip()
    return fields


def retrieval_config(entry: str, pool: str, good: Sequence[Example], *, prime: bool) -> dict[str, str]:
    """The config of a retrieval candidate: ``entry`` of the grid (``"k=8,per_outcome=5"``) on
    ``pool``, plus the response prefix of the ``good`` examples when ``prime``."""
    fields = grid_entry(entry)
    try:
        settings = RetrievalSettings(
            pool=pool,
            k=int(fields.get("k", "8")),
            per_outcome=int(fields.get("per_outcome", "0")),
            min_reward=float(fields.get("min_reward", "0")),
            index=fields.get("index", DEFAULT_INDEX),
        )
    except ValueError as e:
        raise ValueError(f"bad retrieval_grid entry {entry!r}: {e}") from None
    config = settings.to_config()
    prefix = response_prefix([e.response for e in good]) if prime else ""
    if prefix:
        config["response_prefix"] = prefix
    return config


def retrieval_unavailable(store: ResourceStore, pool: str | None, good: Sequence[Example]) -> str | None:
    """Why a retrieval candidate cannot be proposed now, or ``None``."""
    if pool is None:
        return "no retrieval_pool configured"
    if not good:
        return "no high-reward triplets to learn from"
    if pool not in store.names() or PRODUCTION not in store.labels(pool):
        return f"the demonstration pool {pool} has no production version yet (is a curator running?)"
    return None


def response_prefix(responses: Sequence[str]) -> str:
    """What every good response starts with, when they differ after it (at least two kinds of
    response): the model is then asked only for the part that varies. ``""`` otherwise."""
    if len({response_class(r) for r in responses}) < 2:
        return ""  # one kind of answer: its "common prefix" would be the answer itself
    prefix = os.path.commonprefix(list(responses))
    return prefix if prefix.strip() else ""
