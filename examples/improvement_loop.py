"""``agentstream demo``: the whole improvement loop on the embedded default, with no network.

1. The stack comes up: Kafka (embedded), stream workers, the ClickHouse sink (chDB), the A/B
   promotion controller; then llama.cpp's OpenAI-compatible server with Gemma 3 270M, and a runner
   executing the support agent (:mod:`.support_agent`).
2. The seed prompt is published as ``support-prompt`` v1, labelled ``production``.
3. Traffic: training tickets run as rollouts; rewards arrive (rules at once, business events later);
   the joiner turns them into triplets.
4. Each round, APO reads the triplets, proposes candidates, scores them with validation rollouts,
   and publishes the winner as ``candidate``. Runners pick it up live and split traffic 50/50;
   the promotion controller promotes it (or rolls it back) from the per-version metrics.
5. The test split - used only here - scores the seed and the final production prompt.

Ends with a table of versions, a PNG plot of success rate per version over time, and the figures.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentstream.deploy.stack import Stack
from agentstream.producers.client import AgentStream
from agentstream.producers.runner import Runner
from agentstream.resources.store import ResourceStore
from agentstream.schemas import CANDIDATE, PRODUCTION
from agentstream.serving.llama_cpp import GEMMA_MODEL, LocalLLMServer
from agentstream.settings import Settings
from agentstream.trainers.apo import APOConfig, APOTrainer
from agentstream.trainers.evaluation import Evaluation, RolloutEvaluator

from .demo_results import per_version, plot_success, promotion_decisions
from .support_agent import DEMO_MIN_REWARD, PROMPT_RESOURCE, SEED_PROMPT, BusinessEvents, SupportAgent
from .tickets import Ticket, load_tickets


@dataclass
class DemoConfig:
    """The demo's knobs (sized for 2 cores and under 15 minutes)."""

    seed: int = 7
    rounds: int = 2
    #: training tickets per traffic batch (the A/B runs batches until the controller decides)
    traffic_batch: int = 40
    max_ab_batches: int = 2
    #: 2 of 60 validation tickets: a one-ticket "win" is noise
    min_gain: float = 0.03
    beam_width: int = 1
    branch_factor: int = 3
    demos: int = 6
    val_items: int | None = None
    test_items: int | None = None
    concurrency: int = 2
    traffic_temperature: float = 0.7


@dataclass
class DemoReport:
    seed_success: float = 0.0
    final_success: float = 0.0
    test_seed_success: float = 0.0
    test_final_success: float = 0.0
    versions: int = 0
    rollouts: int = 0
    wall_s: float = 0.0
    final_version: int = 1
    rounds: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    plot: str = ""

    def figures(self) -> dict[str, Any]:
        return {
            "seed_success": self.seed_success,
            "final_success": self.final_success,
            "test_seed_success": self.test_seed_success,
            "test_final_success": self.test_final_success,
            "versions": self.versions,
            "rollouts": self.rollouts,
            "wall_s": round(self.wall_s, 1),
            "final_version": self.final_version,
            "rounds": self.rounds,
            "decisions": self.decisions,
            "plot": self.plot,
        }


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


def _task(ticket: Ticket, temperature: float, seed: int) -> dict[str, Any]:
    return {
        "ticket_id": ticket.ticket_id,
        "text": ticket.text,
        "queue": ticket.queue,
        "temperature": temperature,
        "seed": seed,
    }


class ImprovementLoop:
    def __init__(self, settings: Settings, config: DemoConfig, console: Console) -> None:
        self.base_settings = settings
        self.config = config
        self.console = console
        self.rng = random.Random(config.seed)
        self.report = DemoReport()
        self.evaluations: list[tuple[str, Evaluation]] = []
        #: validation results per version (APO's, shared across rounds)
        self.scored: dict[int, Evaluation] = {}

    def run(self, plot_path: Path) -> DemoReport:
        started = time.monotonic()
        cfg = self.config
        settings = demo_settings(self.base_settings)
        shutil.rmtree(settings.data_dir, ignore_errors=True)  # the demo's own directory: start clean
        tickets = {split: load_tickets(split) for split in ("train", "val", "test")}
        val = tickets["val"][: cfg.val_items] if cfg.val_items else tickets["val"]
        test = tickets["test"][: cfg.test_items] if cfg.test_items else tickets["test"]
        train = list(tickets["train"])
        self.rng.shuffle(train)
        console = self.console
        with console.status("Starting Kafka, stream worker, ClickHouse sink, promotion controller..."):
            stack = Stack(settings).start()
        try:
            stack.wait_ready(120)
            settings = stack.resolved_settings()
            with console.status("Starting the local LLM server (llama.cpp, Gemma 3 270M)..."):
                llm = LocalLLMServer(log_path=settings.data_dir / "logs" / "llm.log").start()
            console.print(f"Kafka {stack.bootstrap_servers} · LLM {llm.base_url} · data {settings.data_dir}")
            client = AgentStream(settings)
            business = BusinessEvents(client, cfg.seed)
            store = ResourceStore(settings, who="demo").open()
            agent = SupportAgent(llm.base_url, GEMMA_MODEL, business=business)
            runner = Runner(
                agent, settings, client=client, concurrency=cfg.concurrency, resources=store
            ).start()
            evaluator = RolloutEvaluator(settings, client).open()
            try:
                self._loop(settings, store, evaluator, llm, train, val, test)
                business.close()
                client.flush()
                self.report.wall_s = time.monotonic() - started
                self._summarise(stack, store, plot_path)
            finally:
                evaluator.close()
                runner.stop()
                store.close()
                client.close()
                llm.stop()
        finally:
            with console.status("Stopping the stack (the sink flushes first)..."):
                stack.stop()
        return self.report

    # ---- the loop ------------------------------------------------------------------------------------
    def _loop(
        self,
        settings: Settings,
        store: ResourceStore,
        evaluator: RolloutEvaluator,
        llm: LocalLLMServer,
        train: list[Ticket],
        val: list[Ticket],
        test: list[Ticket],
    ) -> None:
        cfg, console, report = self.config, self.console, self.report
        seed = store.publish(PROMPT_RESOURCE, template=SEED_PROMPT, labels=[PRODUCTION], reason="seed prompt")
        console.print(f"Published the seed prompt as {PROMPT_RESOURCE} v{seed.version} (production).")
        cursor = 0

        def traffic(batch: int, title: str) -> Evaluation:
            nonlocal cursor
            chosen = [train[(cursor + i) % len(train)] for i in range(batch)]
            cursor += batch
            items = [_task(t, cfg.traffic_temperature, self.rng.randrange(2**31)) for t in chosen]
            return self._run(
                evaluator,
                title,
                lambda p: evaluator.run(
                    items,
                    mode="train",
                    task_keys=[t.ticket_id for t in chosen],
                    on_progress=p,
                    label="traffic",
                    resource_name=PROMPT_RESOURCE,
                ),
            )

        def evaluate(version: int, items: list[Ticket], mode: str, title: str) -> Evaluation:
            tasks = [_task(t, 0.0, 0) for t in items]
            return self._run(
                evaluator,
                title,
                lambda p: evaluator.evaluate(PROMPT_RESOURCE, version, tasks, mode=mode, on_progress=p),
            )

        traffic(cfg.traffic_batch, f"Traffic on v{seed.version} (training tickets)")
        test_seed = evaluate(seed.version, test, "test", f"Test split on the seed v{seed.version}")
        report.test_seed_success = test_seed.score
        val_seed: float | None = None
        import openai

        optimizer = openai.OpenAI(base_url=llm.base_url, api_key="local")
        scored = self.scored
        for round_index in range(1, cfg.rounds + 1):
            production = store.get(PROMPT_RESOURCE, PRODUCTION)
            console.rule(f"Round {round_index}: APO from v{production.version}")
            apo = APOTrainer(
                APOConfig(
                    resource_name=PROMPT_RESOURCE,
                    beam_width=cfg.beam_width,
                    branch_factor=cfg.branch_factor,
                    rounds=1,
                    demos=cfg.demos,
                    demo_min_reward=DEMO_MIN_REWARD,
                    min_gain=cfg.min_gain,
                    optimizer_model=GEMMA_MODEL,
                    optimizer_api="completions",
                    seed=cfg.seed + round_index,
                ),
                settings,
                evaluator=evaluator,
                val_items=[_task(t, 0.0, 0) for t in val],
                optimizer=optimizer,
                store=store,
                on_event=self._apo_event(),
                scored=scored,
            )
            result = apo.train()
            if val_seed is None:
                val_seed = result.baseline.score or 0.0
            round_info: dict[str, Any] = {
                "round": round_index,
                "from_version": production.version,
                "val_from": result.baseline.score,
                "candidates": [
                    {"version": c.version.version, "strategy": c.strategy, "val": c.score}
                    for c in result.candidates
                ],
                "winner": result.winner.version if result.winner else None,
                "val_winner": result.winner_score,
            }
            report.rounds.append(round_info)
            if result.winner is None:
                console.print("No candidate beat production on validation this round.")
                continue
            console.print(
                f"APO winner v{result.winner.version}: validation {result.winner_score:.0%} "
                f"vs {result.baseline.score:.0%}; labelled candidate, now in the 50/50 A/B split."
            )
            decided = None
            for batch in range(cfg.max_ab_batches):
                traffic(cfg.traffic_batch, f"A/B traffic, batch {batch + 1}")
                decided = self._await_decision(store, result.winner.version, timeout=10.0)
                if decided is not None:
                    break
            round_info["ab"] = decided or "undecided"
            console.print(
                f"A/B decision on v{result.winner.version}: [bold]{decided or 'undecided (still candidate)'}[/]"
            )
            if decided is None:  # leave no candidate behind for the next round
                store.label(PROMPT_RESOURCE, CANDIDATE, None, reason="demo round ended undecided")
        final = store.get(PROMPT_RESOURCE, PRODUCTION)
        report.final_version = final.version
        report.seed_success = val_seed or 0.0
        # a winner is re-published under a new number: its validation score is in its lineage
        report.final_success = float(final.lineage.get("val.score", report.seed_success))
        if final.version == seed.version:
            report.test_final_success = report.test_seed_success
        else:
            report.test_final_success = evaluate(
                final.version, test, "test", f"Test split on the final production v{final.version}"
            ).score

    def _await_decision(self, store: ResourceStore, version: int, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            labels = store.labels(PROMPT_RESOURCE)
            if labels.get(PRODUCTION) == version:
                return "promoted"
            if labels.get(CANDIDATE) != version:
                return "rolled back"
            time.sleep(0.5)
        return None

    def _run(
        self,
        evaluator: RolloutEvaluator,
        title: str,
        call: Callable[[Callable[[int, int], None]], Evaluation],
    ) -> Evaluation:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[rate]}"),
            console=self.console,
            transient=False,
        ) as progress:
            task = progress.add_task(title, total=None, rate="")

            def update(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            evaluation = call(update)
            progress.update(task, rate=f"success {evaluation.score:.0%}")
        self.evaluations.append((title, evaluation))
        self.report.rollouts += evaluation.n
        return evaluation

    def _apo_event(self) -> Any:
        console = self.console
        bars: dict[str, Any] = {}

        def on_event(kind: str, fields: dict[str, Any]) -> None:
            if kind == "triplets":
                console.print(f"APO: {fields['count']} triplets of the resource to learn from.")
            elif kind == "progress":
                progress = bars.get("p")
                if progress is None:
                    progress = Progress(
                        TextColumn("{task.description}"),
                        BarColumn(),
                        MofNCompleteColumn(),
                        TimeElapsedColumn(),
                        console=console,
                    )
                    progress.start()
                    bars["p"] = progress
                    bars["t"] = progress.add_task(f"  validating v{fields['version']}", total=fields["total"])
                progress.update(bars["t"], completed=fields["done"], total=fields["total"])
            elif kind == "scored":
                progress = bars.pop("p", None)
                if progress is not None:
                    progress.stop()
                self.report.rollouts += fields["n"]
                console.print(
                    f"  v{fields['version']} ({fields['strategy']}): validation success "
                    f"{fields['score']:.0%} over {fields['n']} rollouts in {fields['wall_s']:.0f}s"
                )
            elif kind == "candidate":
                verdict = "[green]accepted[/]" if fields["accepted"] else "[red]rejected[/]"
                console.print(
                    f"  candidate v{fields['version']} {verdict} ({fields['score']:.0%} vs parent "
                    f"{fields['parent_score']:.0%})"
                )
            elif kind == "skip":
                console.print(f"  skipped a {fields['strategy']} proposal: {fields['reason']}")

        return on_event

    # ---- the end -------------------------------------------------------------------------------------
    def _summarise(self, stack: Stack, store: ResourceStore, plot_path: Path) -> None:
        report, console = self.report, self.console
        state = store.state(PROMPT_RESOURCE)
        report.versions = len(state.versions)
        history = promotion_decisions(stack)
        report.decisions = history
        rows = per_version(stack)
        table = Table(
            "version",
            "labels",
            "made by",
            "parent",
            "rollouts",
            "success",
            "val",
            "test",
            title=f"{PROMPT_RESOURCE}: versions and their success rates",
        )
        for number, version in sorted(state.versions.items()):
            row = rows.get(str(number), {})
            val = self.scored[number].score if number in self.scored else None
            test = next(
                (e.score for _, e in self.evaluations if e.mode == "test" and e.version == number), None
            )
            made = version.lineage.get("apo.strategy", "seed" if number == 1 else "")
            stage = version.lineage.get("apo.stage", "")
            table.add_row(
                f"v{number}",
                ", ".join(state.labels_of(number)),
                f"{made} {stage}".strip(),
                f"v{version.parent_version}" if version.parent_version else "",
                str(row.get("rollouts", 0)),
                f"{row['success']:.0%}" if row.get("success") is not None else "",
                f"{val:.0%}" if val is not None else "",
                f"{test:.0%}" if test is not None else "",
            )
        console.print(table)
        for decision in history:
            console.print(
                f"decision: {decision['action']} v{decision['candidate_version']} vs "
                f"v{decision['production_version']}: {decision['reason']}"
            )
        report.plot = str(plot_success(stack, plot_path))
        console.print(
            f"Test split: seed {report.test_seed_success:.0%} -> final v{report.final_version} "
            f"{report.test_final_success:.0%} ({(report.test_final_success - report.test_seed_success) * 100:+.0f} "
            f"points); {report.rollouts} rollouts in {report.wall_s:.0f}s. Plot: {report.plot}"
        )


def run_demo(
    settings: Settings, config: DemoConfig, console: Console, plot_path: Path, json_path: Path | None = None
) -> DemoReport:
    """Run the loop; writes the plot and (optionally) the figures as JSON."""
    import signal
    import threading

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: the stack's children are stopped

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupted)
    report = ImprovementLoop(settings, config, console).run(plot_path)
    if json_path is not None:
        json_path.write_text(json.dumps(report.figures(), indent=2, default=str))
    return report
