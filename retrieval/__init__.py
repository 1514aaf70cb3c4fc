"""Retrieved demonstrations: a pool of good examples, and the nearest ones chosen per request.

    pool = DemonstrationPool.from_version(store.get("support-prompt.demos", "production"))
    chosen = select(pool, {"ticket": text}, RetrievalSettings(k=8))

The pool is built from high-reward triplets (:mod:`agentstream.trainers.demonstrations`) and
published as versions of a resource of its own; runners render a prompt template's
``{{demonstrations}}`` variable from it per request (:mod:`agentstream.producers.tracer`).
"""

from .bm25 import BM25Index
from .pool import DEFAULT_INDEX, INDEXES, POOL_FORMAT, Demonstration, DemonstrationPool, PoolError
from .select import RetrievalSettings, render_demonstrations, select

__all__ = [
    "DEFAULT_INDEX",
    "INDEXES",
    "POOL_FORMAT",
    "BM25Index",
    "Demonstration",
    "DemonstrationPool",
    "PoolError",
    "RetrievalSettings",
    "render_demonstrations",
    "select",
]
