"""SFT throughput: our stream trainer against a plain trl script, on the same triplets and device.

    python benchmarks/trainers.py --json results/trainers.json                 # the tiny model, CPU here
    python benchmarks/trainers.py --model /models/gemma-3-270m --steps 50      # any HF causal LM (GPU if any)

Both sides run trl's ``SFTTrainer`` with the same arguments on the same rows; ours reads the rows
as a window from the triplet topic (embedded broker) and saves and publishes the checkpoint after
training, the plain script gets them as a list. Measures (JSON keys, medians over ``--repeats``):

* ``ours_tokens_per_s`` / ``trl_tokens_per_s``: tokens trained on (trl's ``num_tokens``) per second
  of ``trainer.train()``; ``ratio`` is ours / trl;
* ``ours_steps_per_s`` / ``trl_steps_per_s``: optimizer steps per second of ``trainer.train()``;
* ``ours_window_seconds``: a whole window, end to end: read and decode the triplets, load the
  model, train, save the checkpoint, publish the version.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.tinymodel, from a checkout

from confluent_kafka import Producer  # noqa: E402
from rich.console import Console  # noqa: E402

from agentstream.deploy.broker import EmbeddedBroker  # noqa: E402
from agentstream.resources.store import ResourceStore  # noqa: E402
from agentstream.schemas import AvroSerializer, Triplet  # noqa: E402
from agentstream.settings import Settings  # noqa: E402
from agentstream.topics.admin import ensure_topics  # noqa: E402
from agentstream.trainers.data import resolve_format, sft_rows  # noqa: E402
from agentstream.trainers.sft import StreamSFTConfig, StreamSFTTrainer  # noqa: E402

console = Console(stderr=True)
QUEUES = {
    "shipping": "my parcel is late",
    "billing": "I was charged twice",
    "returns": "send back the lamp",
    "technical": "the app crashes",
}


def make_triplets(n: int) -> list[Triplet]:
    """Arithmetic answers and ticket routings, all rewarded 1.0."""
    out = []
    for i in range(n):
        if i % 2:
            queue, text = list(QUEUES.items())[i % 4]
            prompt, answer = f"Ticket #{i}: {text}. Which queue?", f"create_ticket(queue='{queue}')"
        else:
            a, b = i % 10, (i // 10) % 10
            prompt, answer = f"What is {a} + {b}? Show the sum.", f"{a} + {b} = {a + b}"
        now = time.time_ns() // 1_000
        out.append(
            Triplet(
                triplet_id=f"bench-{i}",
                rollout_id=f"ro-{i:06d}",
                span_id=f"{i:016x}",
                prompt_messages=json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
                ),
                response=json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]),
                reward=1.0,
                mode="train",
                task_type="bench",
                created_at=now,
                emitted_at=now,
            )
        )
    return out


def produce(settings: Settings, triplets: list[Triplet]) -> None:
    serializer = AvroSerializer(Triplet.avro_schema())
    producer = Producer(settings.producer_config())
    for t in triplets:
        producer.produce(settings.topic("triplets"), serializer(t.to_avro()), t.rollout_id.encode())
    if producer.flush(30) != 0:
        raise RuntimeError("triplets not delivered")


def plain_trl(
    model_path: str, rows: list[dict[str, Any]], args: dict[str, Any], max_length: int
) -> dict[str, float]:
    """The plain script: load, build SFTTrainer on the rows, train."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto")
    conversation = "messages" in rows[0]
    config = SFTConfig(
        max_length=max_length,
        assistant_only_loss=conversation,
        completion_only_loss=None if conversation else True,
        **args,
    )
    from datasets import Dataset

    trainer = SFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.remove_callback(PrinterCallback)  # as ours does: no per-step printing on either side
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    tokens = max((e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e), default=0)
    return {"seconds": seconds, "tokens": float(tokens), "steps": float(trainer.state.global_step)}


def ours(
    settings: Settings,
    store: ResourceStore,
    model_path: str,
    n: int,
    steps: int,
    batch: int,
    max_length: int,
    lr: float,
    lora_r: int,
    fmt: str,
) -> dict[str, float]:
    config = StreamSFTConfig(
        resource_name="bench-llm",
        base_model=model_path,
        trainer_name=f"bench-{uuid.uuid4().hex[:6]}",
        window_count=n,
        max_steps=steps,
        per_device_train_batch_size=batch,
        max_length=max_length,
        learning_rate=lr,
        lora_r=lora_r,
        format=fmt,
        min_reward=0.5,
    )
    started = time.monotonic()
    [outcome] = StreamSFTTrainer(config, settings, store=store).run(once=True, show_progress=False)
    window_seconds = time.monotonic() - started
    if outcome.version is None:
        raise RuntimeError(f"nothing published: {outcome.status}")
    lineage = outcome.version.lineage
    return {
        "seconds": float(lineage["metrics.train_seconds"]),
        "tokens": float(lineage["metrics.tokens"]),
        "steps": float(lineage["metrics.steps"]),
        "window_seconds": window_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF model folder; default: the tiny test model, built here")
    parser.add_argument("--triplets", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--lora-r", type=int, default=0)
    parser.add_argument("--format", default="auto", help="auto, messages or text")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    import torch

    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    with (
        tempfile.TemporaryDirectory(prefix="agentstream-bench-") as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker,
    ):
        model_path = options.model
        if model_path is None:
            from tests.tinymodel import build_tiny_model

            model_path = str(build_tiny_model(Path(tmp) / "tiny"))
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            data_dir=Path(tmp) / "data",
            topic_prefix=f"b{uuid.uuid4().hex[:8]}.",
            partitions=4,
            trainer={"session_timeout_ms": 2_000},
        )
        ensure_topics(settings)
        triplets = make_triplets(options.triplets)
        produce(settings, triplets)

        from transformers import AutoTokenizer

        fmt = resolve_format(options.format, AutoTokenizer.from_pretrained(model_path))
        rows = sft_rows(triplets, fmt)
        args = {
            "output_dir": str(Path(tmp) / "trl"),
            "max_steps": options.steps,
            "per_device_train_batch_size": options.batch_size,
            "learning_rate": options.lr,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": torch.cuda.is_available(),
            "bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        }
        if options.lora_r:
            console.print("[yellow]--lora-r applies to ours only in this script; compare full fine-tunes[/]")
        plain_trl(model_path, rows, {**args, "max_steps": 2}, options.max_length)  # warm-up: first-use costs

        ours_runs, trl_runs = [], []
        with ResourceStore(settings, who="bench") as store:
            for repeat in range(options.repeats):
                # alternate the order so drift on a shared machine hits both sides
                order = ("ours", "trl") if repeat % 2 == 0 else ("trl", "ours")
                for side in order:
                    if side == "ours":
                        ours_runs.append(
                            ours(
                                settings,
                                store,
                                model_path,
                                options.triplets,
                                options.steps,
                                options.batch_size,
                                options.max_length,
                                options.lr,
                                options.lora_r,
                                options.format,
                            )
                        )
                    else:
                        trl_runs.append(plain_trl(model_path, rows, args, options.max_length))
                console.print(
                    f"repeat {repeat + 1}: ours {ours_runs[-1]['tokens'] / ours_runs[-1]['seconds']:,.0f} "
                    f"tok/s, trl {trl_runs[-1]['tokens'] / trl_runs[-1]['seconds']:,.0f} tok/s"
                )

    def median(runs: list[dict[str, float]], key: str) -> float:
        return (
            statistics.median(r[key] / r["seconds"] for r in runs)
            if key != "window_seconds"
            else statistics.median(r[key] for r in runs)
        )

    figures = {
        "device": device,
        "model": options.model or "tiny (2-layer Llama, 512-token vocab)",
        "triplets": options.triplets,
        "steps": options.steps,
        "batch_size": options.batch_size,
        "max_length": options.max_length,
        "format": fmt,
        "repeats": options.repeats,
        "tokens_per_step": statistics.median(r["tokens"] / r["steps"] for r in trl_runs),
        "ours_tokens_per_s": median(ours_runs, "tokens"),
        "trl_tokens_per_s": median(trl_runs, "tokens"),
        "ours_steps_per_s": median(ours_runs, "steps"),
        "trl_steps_per_s": median(trl_runs, "steps"),
        "ours_window_seconds": median(ours_runs, "window_seconds"),
    }
    figures["ratio"] = figures["ours_tokens_per_s"] / figures["trl_tokens_per_s"]
    print(json.dumps(figures, indent=2))
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
