"""The demo's configuration, its report, and the tickets of one run."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentstream.schemas import CANDIDATE, PRODUCTION
from agentstream.settings import Settings

from .demo_results import Phase
from .tickets import Ticket, load_tickets, queues_of, read_ticket_file

__all__ = ["DemoConfig", "DemoData", "DemoReport", "demo_settings", "task_of"]


@dataclass
class DemoConfig:
    """The demo's knobs (sized for 2 cores and under 15 minutes)."""

    seed: int = 7
    #: a second round found nothing better in every measured run: the time goes to SFT-free traffic
    rounds: int = 1
    #: training tickets run on the seed prompt first: the escalations humans answer seed the pool
    warmup_traffic: int = 200
    #: training tickets per traffic batch (the A/B runs batches until the controller decides)
    traffic_batch: int = 40
    max_ab_batches: int = 2
    #: training tickets run on the final version after the rounds, as production keeps running (its
    #: good answers keep filling the pool); 0 by default, for the 15-minute budget
    production_traffic: int = 0
    #: after APO, LoRA SFT on the good calls, distilled into the bare-ticket prompt (examples/sft_stage.py)
    sft: bool = True
    #: optimizer steps (batch 4) over the seed traffic's 135-155 good calls: the 100 steps of
    #: benchmarks/sft_budget.py's 98% run (200 examples, 2 epochs); 2 epochs over 136 calls (68 steps)
    #: gave account 67% on test in one of two runs. About 3.3 minutes on 2 cores, whatever the count
    sft_steps: int = 100
    sft_max_examples: int = 400
    #: 2 of 60 validation tickets: a one-ticket "win" is noise
    min_gain: float = 0.03
    beam_width: int = 1
    #: one retrieval candidate (k=4; --rounds 2 tries k=8 next), then SFT's: k=8 cost 90-115 s of
    #: validation and never went to the A/B in the measured runs (within noise of k=4, at twice the prompt)
    branch_factor: int = 1
    #: no bootstrapped-demos candidates: a fixed set of 6 scored 17-28% on validation in every measured
    #: run, where retrieving per ticket scored 90%+ (their 35 s go to SFT)
    demos: int = 0
    val_items: int | None = None
    test_items: int | None = None
    concurrency: int = 2
    #: the stack (broker, sink, workers) runs at this lower priority: on 2 cores its polling stole
    #: enough from the LLM server's two threads to double its time per prompt token (5.5 vs 2.5 ms)
    stack_nice: int = 10
    traffic_temperature: float = 0.7
    #: your own tickets (JSONL with ``split``) instead of the bundled ones
    tickets: Path | None = None
    #: an external test file scored on the seed and the final version
    test_tickets: Path | None = None
    #: an OpenAI-compatible endpoint for textual gradients (``None``: none, said so)
    optimizer_url: str | None = None
    optimizer_model: str = "gpt-4.1-mini"


@dataclass
class DemoReport:
    seed_success: float = 0.0
    final_success: float = 0.0
    test_seed_success: float = 0.0
    test_final_success: float = 0.0
    test_seed_by_queue: dict[str, float] = field(default_factory=dict)
    test_final_by_queue: dict[str, float] = field(default_factory=dict)
    external_test_seed_success: float | None = None
    external_test_final_success: float | None = None
    external_test_seed_by_queue: dict[str, float] = field(default_factory=dict)
    external_test_final_by_queue: dict[str, float] = field(default_factory=dict)
    pool_size: int = 0
    pool_versions: int = 0
    versions: int = 0
    rollouts: int = 0
    wall_s: float = 0.0
    final_version: int = 1
    rounds: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    plot: str = ""

    def figures(self) -> dict[str, Any]:
        figures = {k: v for k, v in vars(self).items() if k != "phases"}
        figures["wall_s"] = round(self.wall_s, 1)
        figures["phases"] = [vars(p) for p in self.phases]
        return figures


def demo_settings(settings: Settings) -> Settings:
    """The stack's settings for the demo: its own data directory, short metric windows, a 50/50 split."""
    data_dir = settings.data_dir / "demo"
    return settings.model_copy(
        update={
            "data_dir": data_dir,
            "partitions": 4,
            "streams": settings.streams.model_copy(update={"workers": 1, "metrics_window_seconds": 10.0}),
            "runner": settings.runner.model_copy(update={"traffic": {PRODUCTION: 0.5, CANDIDATE: 0.5}}),
            "promotion": settings.promotion.model_copy(
                update={"min_samples": 30, "interval_seconds": 2.0, "max_samples": 150}
            ),
        }
    )


def task_of(ticket: Ticket, temperature: float, seed: int) -> dict[str, Any]:
    return {
        "ticket_id": ticket.ticket_id,
        "text": ticket.text,
        "queue": ticket.queue,
        "priority": ticket.priority,
        "temperature": temperature,
        "seed": seed,
    }


@dataclass
class DemoData:
    """The tickets of one demo run, by split, and the queues they use."""

    train: list[Ticket]
    val: list[Ticket]
    test: list[Ticket]
    external_test: list[Ticket]
    queues: tuple[str, ...]

    @classmethod
    def load(cls, config: DemoConfig, rng: random.Random) -> DemoData:
        if config.tickets is not None:
            mine = read_ticket_file(config.tickets)
            split = {name: [t for t in mine if t.split == name] for name in ("train", "val", "test")}
        else:
            split = {name: load_tickets(name) for name in ("train", "val", "test")}
        external = read_ticket_file(config.test_tickets, require_splits=False) if config.test_tickets else []
        train = list(split["train"])
        rng.shuffle(train)
        val = split["val"][: config.val_items] if config.val_items else split["val"]
        test = split["test"][: config.test_items] if config.test_items else split["test"]
        queues = queues_of([*split["train"], *split["val"], *split["test"], *external])
        return cls(train, val, test, external, queues)
