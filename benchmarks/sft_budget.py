"""SFT within the demo's budget: what LoRA on the demo's tickets costs on this machine, and what it buys.

    python benchmarks/sft_budget.py --prompt zero --epochs 2 --json results/sft_zero.json
    python benchmarks/sft_budget.py --prompt knn --epochs 1 --json results/sft_knn.json

Trains the bundled Gemma 3 270M (base) through the demo's SFT stage (``run_sft_stage``: the
triplets topic on an embedded broker, our ``StreamSFTTrainer``, a published LoRA version) on the
training tickets answered right, in one of two prompt shapes:

* ``zero``: the ticket alone, primed up to the queue (``Ticket: ..\\nAction: create_ticket({"queue": "``),
  short, so training and serving are cheap, and the model has to learn the queues themselves;
* ``knn``: the 4 nearest other training tickets (MiniLM) as demonstrations before it, as the demo's
  winning retrieval prompt renders them, so the model learns to use its neighbours.

Then it scores the validation split, greedy, in-process (transformers, with and without the
adapter), in the same prompt shape. JSON keys: ``prompt``, ``examples``, ``epochs``, ``lora_r``,
``train_seconds`` (``trainer.train()``), ``prompt_tokens_per_example``, ``stage_seconds`` (window read, model load,
train, save, publish), ``val_base_success``, ``val_sft_success``, ``val_base_by_queue``,
``val_sft_by_queue``, ``s_per_ticket_base``, ``s_per_ticket_sft``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from confluent_kafka import Producer
from rich.console import Console

from agentstream.deploy.broker import EmbeddedBroker
from agentstream.examples.sft_stage import run_sft_stage
from agentstream.examples.support_agent import create_ticket, format_call, parse_call
from agentstream.examples.tickets import Ticket, load_tickets
from agentstream.resources.store import ResourceStore
from agentstream.retrieval import (
    Demonstration,
    DemonstrationPool,
    RetrievalSettings,
    render_demonstrations,
    select,
)
from agentstream.schemas import AvroSerializer, Triplet, render_template
from agentstream.settings import Settings
from agentstream.topics.admin import ensure_topics
from agentstream.trainers.base_model import gemma_base_model

console = Console(stderr=True)
PREFIX = ' create_ticket({"queue": "'
GOOD = {"routing": 1.0, "resolution": 1.0}


#: the demo's retrieval template (instruction dropped); each demonstration renders like its query
TEMPLATE = "{{demonstrations}}Ticket: {{ticket}}\nAction:"


def prompts(tickets: list[Ticket], pool: DemonstrationPool | None, k: int) -> list[str]:
    """Each ticket's prompt text, ending with the response prefix the model continues: the ticket
    alone without a ``pool``, else after its ``k`` nearest other examples, as the demo renders them."""
    out = []
    for t in tickets:
        chosen = (
            []
            if pool is None
            else select(pool, {"ticket": t.text}, RetrievalSettings("support-prompt.demos", k=k))
        )
        shown = render_demonstrations(TEMPLATE, chosen)
        out.append(render_template(TEMPLATE, {"demonstrations": shown, "ticket": t.text}) + PREFIX)
    return out


def triplet(prompt: str, ticket: Ticket) -> Triplet:
    """A good call as the stream worker writes it: the prompt seen, the completion after the prefix."""
    now = time.time_ns() // 1_000
    rollout_id = f"ro-{uuid.uuid4().hex[:12]}"
    answer = f'{ticket.queue}", "priority": "{ticket.priority}"}})'
    return Triplet(
        triplet_id=f"{rollout_id}:0",
        version=1,
        rollout_id=rollout_id,
        attempt_id=f"{rollout_id}#1",
        span_id=uuid.uuid4().hex[:16],
        prompt_messages=json.dumps([{"role": "user", "parts": [{"type": "text", "content": prompt}]}]),
        response=json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]),
        reward=1.0,
        reward_dimensions=GOOD,
        resource_name="support-prompt",
        resource_version="2",
        mode="train",
        task_type="support",
        model="gemma-3-270m",
        created_at=now,
        emitted_at=now,
    )


def score(model: Any, tokenizer: Any, texts: list[str], tickets: list[Ticket]) -> dict[str, Any]:
    """Greedy answers to ``texts``: success overall and per queue, seconds per ticket."""
    import torch

    right: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    started = time.monotonic()
    for text, ticket in zip(texts, tickets, strict=True):
        inputs = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        completion = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        seen[ticket.queue] += 1
        try:
            arguments = parse_call(PREFIX + completion.split("\n")[0])
            create_ticket(arguments)
            right[ticket.queue] += arguments["queue"] == ticket.queue
        except ValueError:
            pass
    return {
        "success": round(sum(right.values()) / len(tickets), 3),
        "by_queue": {q: round(right[q] / n, 3) for q, n in sorted(seen.items())},
        "s_per_ticket": round((time.monotonic() - started) / len(tickets), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", choices=("zero", "knn"), default="zero")
    parser.add_argument("--k", type=int, default=4, help="demonstrations per prompt with --prompt knn")
    parser.add_argument("--examples", type=int, default=200, help="training tickets learned from")
    parser.add_argument("--val", type=int, default=None, help="validation tickets scored (default all 60)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "agentstream" / "models")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    everyone = load_tickets("train")
    train, val = everyone[: options.examples], load_tickets("val")[: options.val]
    pool = None
    if options.prompt == "knn":
        demonstrations = [
            Demonstration({"ticket": t.text}, " " + format_call(t.queue, t.priority), 2.0, t.queue)
            for t in everyone
        ]
        pool = DemonstrationPool(demonstrations, "support-prompt")
    train_texts, val_texts = prompts(train, pool, options.k), prompts(val, pool, options.k)
    with (
        tempfile.TemporaryDirectory(prefix="agentstream-bench-") as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            data_dir=Path(tmp) / "data",
            topic_prefix=f"b{uuid.uuid4().hex[:8]}.",
            partitions=2,
            trainer={"session_timeout_ms": 2_000},
        )
        ensure_topics(settings)
        base = gemma_base_model(settings, cache_dir=options.models)
        serializer = AvroSerializer(Triplet.avro_schema())
        producer = Producer(settings.producer_config())
        for text, ticket in zip(train_texts, train, strict=True):
            t = triplet(text, ticket)
            producer.produce(settings.topic("triplets"), serializer(t.to_avro()), t.rollout_id.encode())
        if producer.flush(30) != 0:
            raise RuntimeError("triplets not delivered")

        started = time.monotonic()
        with ResourceStore(settings, who="bench") as store:
            version = run_sft_stage(
                settings,
                store,
                base_model=base,
                lora_r=options.lora_r,
                epochs=options.epochs,
                learning_rate=options.lr,
                batch_size=options.batch_size,
                max_examples=len(train),
                max_length=1024,
                settle_seconds=5.0,
            )
        stage_seconds = time.monotonic() - started
        console.print(f"SFT stage: {stage_seconds:.0f} s, lineage {dict(version.lineage)}")

        tokenizer = AutoTokenizer.from_pretrained(base)
        prompt_tokens = sum(len(tokenizer(text)["input_ids"]) for text in train_texts)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        before = score(model, tokenizer, val_texts, val)
        console.print(f"base: {before}")
        tuned = PeftModel.from_pretrained(model, str(version.uri)).eval()
        after = score(tuned, tokenizer, val_texts, val)
        console.print(f"SFT: {after}")

    figures = {
        "prompt": options.prompt,
        "examples": len(train),
        "epochs": options.epochs,
        "lora_r": options.lora_r,
        "threads": torch.get_num_threads(),
        "train_seconds": float(version.lineage["metrics.train_seconds"]),
        "prompt_tokens_per_example": round(prompt_tokens / len(train)),
        "stage_seconds": round(stage_seconds, 1),
        "val_base_success": before["success"],
        "val_sft_success": after["success"],
        "val_base_by_queue": before["by_queue"],
        "val_sft_by_queue": after["by_queue"],
        "s_per_ticket_base": before["s_per_ticket"],
        "s_per_ticket_sft": after["s_per_ticket"],
    }
    print(json.dumps(figures))
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
