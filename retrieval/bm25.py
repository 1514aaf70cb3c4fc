"""Lexical nearest neighbours with BM25 (``bm25s``: a maintained, numpy-only BM25).

Measured on the demo's validation split against TF-IDF cosine (benchmarks/retrieval.py): BM25
picks demonstrations at least as well, and needs no model download, which an embedding model
shipped in a PyPI package would still need at run time or in the wheel (hundreds of MB).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import bm25s
import numpy as np

__all__ = ["BM25Index"]

# bm25s pins its logger at DEBUG on import, which prints a line per index into any application
# logging at INFO; hand the level back to the application's logging configuration.
logging.getLogger("bm25s").setLevel(logging.NOTSET)


class BM25Index:
    """An immutable BM25 index over ``texts``; :meth:`nearest` gives indices, best first."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.size = len(texts)
        self._retriever: bm25s.BM25 | None = None
        if self.size:
            retriever = bm25s.BM25()
            retriever.index(
                bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False
            )
            self._retriever = retriever

    def nearest(self, query: str, n: int) -> list[tuple[int, float]]:
        """Up to ``n`` (index, score) pairs, highest score first; texts sharing no term score 0."""
        n = min(n, self.size)
        if self._retriever is None or n <= 0:
            return []
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not any(len(ids) for ids in tokens.ids):  # only stopwords: nothing to match on
            return []
        docs, scores = self._retriever.retrieve(tokens, k=n, show_progress=False)
        return [(int(i), float(s)) for i, s in zip(np.asarray(docs[0]), np.asarray(scores[0]), strict=True)]
