"""``agentstream demo``: the whole improvement loop on the embedded default, with no network.

1. The stack comes up: Kafka (embedded), stream workers, the ClickHouse sink (chDB), the A/B
   promotion controller; then llama.cpp's OpenAI-compatible server with Gemma 3 270M, and a runner
   executing the support agent (:mod:`.support_agent`).
2. The seed prompt is published as ``support-prompt`` v1, labelled ``production``.
3. Traffic: training tickets run as rollouts; rewards arrive (rules at once, business events later);
   the joiner turns them into triplets.
   A curator (:mod:`agentstream.trainers.demonstrations`) turns every high-reward triplet (human
   handoffs included) into a demonstration of the pool ``support-prompt.demos``, published live.
4. Each round, APO reads the triplets, proposes candidates (a prompt that retrieves the nearest
   demonstrations per request, with settings from a grid; bootstrapped demonstrations; textual
   gradients when an optimizer endpoint is given), scores them with validation rollouts, and
   publishes its winner. Then SFT (:mod:`.sft_stage`): a LoRA adapter of the model trained on the
   good calls so far, distilled into a prompt of the bare ticket, published as a model version and
   a prompt version bound to it, scored on validation the same way. Of the finalists within noise
   (``min_gain``) of the best score, the cheapest request (fewest retrieved demonstrations) is
   labelled ``candidate``. Runners pick it up live and split traffic 50/50; the promotion
   controller promotes it (or rolls it back) from the per-version metrics.
5. Production traffic runs on the final version; its good answers keep filling the pool.
6. The test split - used only here - scores the seed and the final production prompt, per queue
   (and an external test file's tickets, with ``--test-tickets``).

Ends with a table of versions, a PNG plot (success per version with 95% bands, the phases marked,
the test split per queue), and the figures.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from agentstream.deploy.stack import Stack
from agentstream.producers.client import AgentStream
from agentstream.producers.runner import Runner
from agentstream.resources.store import ResourceStore
from agentstream.schemas import CANDIDATE, PRODUCTION, ResourceVersion
from agentstream.serving.llama_cpp import GEMMA_MODEL, LocalLLMServer
from agentstream.settings import Settings
from agentstream.trainers.apo import APOConfig, APOTrainer
from agentstream.trainers.base_model import BaseModelError, gemma_base_model, user_model_cache
from agentstream.trainers.demonstrations import CuratorConfig, DemonstrationCurator
from agentstream.trainers.evaluation import Evaluation, RolloutEvaluator

from .demo_config import DemoConfig, DemoData, DemoReport, demo_settings, task_of
from .demo_progress import apo_printer, with_progress
from .demo_results import Phase
from .demo_summary import summarise
from .finalists import cheapest_within_noise, describe
from .sft_stage import (
    DISTILLED_PREFIX,
    DISTILLED_TEMPLATE,
    MODEL_RESOURCE,
    SFTStageError,
    publish_bound_prompt,
    run_sft_stage,
)
from .support_agent import (
    DEMO_MIN_REWARD,
    POOL_RESOURCE,
    PROMPT_RESOURCE,
    BusinessEvents,
    SupportAgent,
    seed_prompt,
)
from .tickets import Ticket

#: Why APO proposes no textual-gradient candidates without an optimizer endpoint.
NO_OPTIMIZER = (
    "Textual gradients: off. No optimizer endpoint was given (--optimizer-url): the bundled Gemma 3 "
    "270M is a base model, which continues text instead of following the critique and rewrite "
    "instructions (its rewrites scored 0% on validation), so APO proposes candidates built from the "
    "good calls only (retrieved demonstrations)."
)


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
        self.started = time.monotonic()
        self.agent: SupportAgent | None = None
        #: the model server, started when the first SFT version is to be served
        self._servers = contextlib.ExitStack()
        self._model_server: tuple[str, str | None] | None = None  # its base URL and token

    def run(self, plot_path: Path) -> DemoReport:
        self.started = time.monotonic()
        cfg = self.config
        data = DemoData.load(cfg, self.rng)  # a bad tickets file fails here, before anything starts
        settings = demo_settings(self.base_settings)
        shutil.rmtree(settings.data_dir, ignore_errors=True)  # the demo's own directory: start clean
        console = self.console
        with console.status("Starting Kafka, stream worker, ClickHouse sink, promotion controller..."):
            stack = Stack(settings, nice=cfg.stack_nice).start()
        try:
            stack.wait_ready(120)
            settings = stack.resolved_settings()
            with console.status("Starting the local LLM server (llama.cpp, Gemma 3 270M)..."):
                llm = LocalLLMServer(log_path=settings.data_dir / "logs" / "llm.log").start()
            console.print(f"Kafka {stack.bootstrap_servers} · LLM {llm.base_url} · data {settings.data_dir}")
            client = AgentStream(settings)
            business = BusinessEvents(client, cfg.seed)
            store = ResourceStore(settings, who="demo").open()
            agent = SupportAgent(
                llm.base_url, GEMMA_MODEL, business=business, queues=data.queues, api_key=llm.api_key
            )
            self.agent = agent
            runner = Runner(
                agent, settings, client=client, concurrency=cfg.concurrency, resources=store
            ).start()
            evaluator = RolloutEvaluator(settings, client).open()
            curator = DemonstrationCurator(
                CuratorConfig(PROMPT_RESOURCE, POOL_RESOURCE, min_reward=DEMO_MIN_REWARD, interval_s=5.0),
                settings,
                store,
            ).start()
            try:
                self._loop(settings, store, evaluator, curator, data)
                business.close()
                client.flush()
                self.report.wall_s = time.monotonic() - self.started
                summarise(
                    self.report, self.console, stack, store, (self.scored, self.evaluations), plot_path, data
                )
            finally:
                self._servers.close()
                curator.stop()
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
        curator: DemonstrationCurator,
        data: DemoData,
    ) -> None:
        cfg, console, report = self.config, self.console, self.report
        seed = store.publish(
            PROMPT_RESOURCE, template=seed_prompt(data.queues), labels=[PRODUCTION], reason="seed prompt"
        )
        console.print(f"Published the seed prompt as {PROMPT_RESOURCE} v{seed.version} (production).")
        train, cursor = data.train, 0

        def traffic(batch: int, title: str, phase: str) -> Evaluation:
            nonlocal cursor
            chosen = [train[(cursor + i) % len(train)] for i in range(batch)]
            cursor += batch
            items = [task_of(t, cfg.traffic_temperature, self.rng.randrange(2**31)) for t in chosen]
            evaluation = self._run(
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
            for version in sorted(set(evaluation.versions)):
                mine = [
                    sc for sc, v in zip(evaluation.scores, evaluation.versions, strict=True) if v == version
                ]
                self._phase(phase, "traffic", version, len(mine), int(sum(mine)))
            return evaluation

        def evaluate(version: int, items: list[Ticket], mode: str, title: str, phase: str) -> Evaluation:
            tasks = [task_of(t, 0.0, 0) for t in items]
            evaluation = self._run(
                title, lambda p: evaluator.evaluate(PROMPT_RESOURCE, version, tasks, mode=mode, on_progress=p)
            )
            self._phase(phase, mode, str(version), evaluation.n, int(sum(evaluation.scores)))
            return evaluation

        traffic(cfg.warmup_traffic, f"Traffic on v{seed.version} (training tickets)", "seed traffic")
        test_seed = evaluate(
            seed.version, data.test, "test", f"Test split on the seed v{seed.version}", "test"
        )
        report.test_seed_success = test_seed.score
        report.test_seed_by_queue = test_seed.score_by([t.queue for t in data.test])
        if data.external_test:
            external = evaluate(
                seed.version, data.external_test, "test", "External test file on the seed", "test"
            )
            report.external_test_seed_success = external.score
            report.external_test_seed_by_queue = external.score_by([t.queue for t in data.external_test])
        optimizer = self._optimizer()
        val_seed: float | None = None
        for round_index in range(1, cfg.rounds + 1):
            pool = self._pool_ready(curator, store)
            production = store.get(PROMPT_RESOURCE, PRODUCTION)
            console.rule(
                f"Round {round_index}: APO from v{production.version} ({pool} demonstrations in the pool)"
            )
            apo = APOTrainer(
                APOConfig(
                    resource_name=PROMPT_RESOURCE,
                    beam_width=cfg.beam_width,
                    branch_factor=cfg.branch_factor,
                    rounds=1,
                    demos=cfg.demos,
                    demo_min_reward=DEMO_MIN_REWARD,
                    min_gain=cfg.min_gain,
                    optimizer_model=cfg.optimizer_model,
                    optimizer_api="chat",
                    retrieval_pool=POOL_RESOURCE,
                    label=None,  # the round's winner (APO's or SFT's) is labelled below
                    seed=cfg.seed + round_index,
                ),
                settings,
                evaluator=evaluator,
                val_items=[task_of(t, 0.0, 0) for t in data.val],
                optimizer=optimizer,
                store=store,
                on_event=apo_printer(console, self._on_scored(f"APO round {round_index}")),
                scored=self.scored,
            )
            result = apo.train()
            if val_seed is None:
                val_seed = result.baseline.score or 0.0
            round_info: dict[str, Any] = {
                "round": round_index,
                "from_version": production.version,
                "pool": pool,
                "val_from": result.baseline.score,
                "candidates": [
                    {"version": c.version.version, "strategy": c.strategy, "val": c.score}
                    for c in result.candidates
                ],
                "apo_winner": result.winner.version if result.winner else None,
                "val_apo_winner": result.winner_score,
            }
            report.rounds.append(round_info)
            finalists: list[tuple[ResourceVersion, float]] = []
            if result.winner is not None and result.winner_score is not None:
                finalists.append((result.winner, result.winner_score))
            if cfg.sft:
                sft = self._sft_candidate(settings, store, production, round_info, evaluate, data)
                if sft is not None and sft[1] > (result.baseline.score or 0.0) + cfg.min_gain:
                    finalists.append(sft)
            winner = cheapest_within_noise(finalists, cfg.min_gain)
            round_info["winner"] = winner[0].version if winner else None
            round_info["val_winner"] = winner[1] if winner else None
            if winner is None:
                console.print("No candidate beat production on validation this round.")
                continue
            store.label(
                PROMPT_RESOURCE, CANDIDATE, winner[0].version, reason=f"demo round {round_index} winner"
            )
            console.print(
                f"Round winner v{winner[0].version} ({describe(winner[0])}): validation {winner[1]:.0%} vs "
                f"{result.baseline.score:.0%}; labelled candidate, now in the 50/50 A/B split."
            )
            chosen = winner[0]
            decided = None
            for batch in range(cfg.max_ab_batches):
                traffic(cfg.traffic_batch, f"A/B traffic, batch {batch + 1}", f"A/B round {round_index}")
                decided = self._await_decision(store, chosen.version, timeout=10.0)
                if decided is not None:
                    break
            round_info["ab"] = decided or "undecided"
            console.print(
                f"A/B decision on v{chosen.version}: [bold]{decided or 'undecided (still candidate)'}[/]"
            )
            if decided is None:  # leave no candidate behind for the next round
                store.label(PROMPT_RESOURCE, CANDIDATE, None, reason="demo round ended undecided")
        final = store.get(PROMPT_RESOURCE, PRODUCTION)
        if cfg.production_traffic and final.version != seed.version:
            # production keeps running: its good answers join the pool the final version retrieves from
            traffic(cfg.production_traffic, f"Production traffic on v{final.version}", "production")
            pool = self._pool_ready(curator, store)
            console.print(f"{pool} demonstrations in the pool after production traffic.")
        report.final_version = final.version
        report.seed_success = val_seed or 0.0
        # a winner is re-published under a new number: its validation score is in its lineage
        report.final_success = float(final.lineage.get("val.score", report.seed_success))
        test_final = (
            test_seed
            if final.version == seed.version
            else evaluate(
                final.version,
                data.test,
                "test",
                f"Test split on the final production v{final.version}",
                "test",
            )
        )
        report.test_final_success = test_final.score
        report.test_final_by_queue = test_final.score_by([t.queue for t in data.test])
        if data.external_test:
            external = evaluate(
                final.version, data.external_test, "test", "External test file on the final version", "test"
            )
            report.external_test_final_success = external.score
            report.external_test_final_by_queue = external.score_by([t.queue for t in data.external_test])

    def _sft_candidate(
        self,
        settings: Settings,
        store: ResourceStore,
        production: ResourceVersion,
        round_info: dict[str, Any],
        evaluate: Callable[[int, list[Ticket], str, str, str], Evaluation],
        data: DemoData,
    ) -> tuple[ResourceVersion, float] | None:
        """SFT after APO: LoRA on the good calls so far, distilled into the bare-ticket prompt, then
        published as a prompt version bound to the new model and scored on validation like APO's."""
        cfg, console = self.config, self.console
        console.rule("SFT: LoRA on the good calls, distilled into the bare-ticket prompt")
        started = time.monotonic()
        try:
            _no_library_progress_bars()  # the demo draws its own; theirs would interleave with its lines
            with console.status("Training a LoRA adapter of Gemma 3 270M on CPU..."):
                model = run_sft_stage(
                    settings,
                    store,
                    base_model=gemma_base_model(settings, cache_dir=user_model_cache()),
                    max_steps=cfg.sft_steps,
                    max_examples=cfg.sft_max_examples,
                    label=None,  # the prompt version bound to it carries the A/B label
                    prompt_template=DISTILLED_TEMPLATE,
                    response_prefix=DISTILLED_PREFIX,
                    seed=cfg.seed,
                )
        except (SFTStageError, BaseModelError, ImportError) as e:
            if isinstance(e, ImportError):  # e.g. torch, without the train extra
                e = SFTStageError(f"{e}: SFT needs pip install 'agentstream[train]' (or run with --no-sft)")
            console.print(f"[yellow]SFT skipped: {e}[/]")
            round_info["sft"] = {"error": str(e)}
            return None
        prompt = publish_bound_prompt(store, model, production)
        console.print(
            f"{MODEL_RESOURCE} v{model.version}: {model.lineage.get('metrics.examples')} good calls, "
            f"{model.lineage.get('metrics.train_seconds')} s of training; published with its prompt as "
            f"{PROMPT_RESOURCE} v{prompt.version}."
        )
        assert self.agent is not None
        self.agent.serve(MODEL_RESOURCE, *self._start_model_server(settings, store))
        evaluation = evaluate(
            prompt.version, data.val, "val", f"Validation on v{prompt.version} (SFT)", "SFT"
        )
        self.scored[prompt.version] = evaluation
        round_info["sft"] = {
            "model_version": model.version,
            "prompt_version": prompt.version,
            "examples": model.lineage.get("metrics.examples"),
            "train_seconds": model.lineage.get("metrics.train_seconds"),
            "stage_seconds": round(time.monotonic() - started, 1),
            "val": evaluation.score,
        }
        return prompt, evaluation.score

    def _start_model_server(self, settings: Settings, store: ResourceStore) -> tuple[str, str | None]:
        """The model server's URL and token, started once (it follows the resources and loads
        versions on use)."""
        if self._model_server is None:
            from agentstream.serving.model_server import ModelServer

            with self.console.status("Starting the model server (LoRA versions of Gemma 3 270M)..."):
                server = ModelServer(settings, [MODEL_RESOURCE], store=store, port=0).start()
            self._servers.callback(server.stop)
            self._model_server = server.base_url, server.token
        return self._model_server

    def _optimizer(self) -> Any:
        """The textual-gradient optimizer client, or ``None`` (and the console says why)."""
        if self.config.optimizer_url is None:
            self.console.print(NO_OPTIMIZER)
            return None
        import os

        import openai

        self.console.print(
            f"Textual gradients: {self.config.optimizer_model} at {self.config.optimizer_url}."
        )
        # the key comes from OPENAI_API_KEY, as the openai client reads it; never from the command line
        return openai.OpenAI(
            base_url=self.config.optimizer_url, api_key=os.environ.get("OPENAI_API_KEY", "none")
        )

    def _pool_ready(self, curator: DemonstrationCurator, store: ResourceStore, timeout: float = 60.0) -> int:
        """Fold what the curator has seen into the pool now; its size (the warm-up's escalations are
        answered by humans a few seconds after their rollouts end, so wait for the pool to grow)."""
        deadline = time.monotonic() + timeout
        size = last = -1
        while time.monotonic() < deadline:
            curator.publish_now()
            size = (
                int(store.get(POOL_RESOURCE, PRODUCTION).config.get("size", "0"))
                if (POOL_RESOURCE in store.names() and PRODUCTION in store.labels(POOL_RESOURCE))
                else 0
            )
            if size > 0 and size == last:
                break
            last = size
            time.sleep(3.0)
        return max(size, 0)

    def _phase(self, phase: str, kind: str, version: str, n: int, successes: int) -> None:
        self.report.phases.append(
            Phase(phase, kind, version, n, successes, round(time.monotonic() - self.started, 1))
        )

    def _on_scored(self, phase: str) -> Callable[[dict[str, Any]], None]:
        def scored(fields: dict[str, Any]) -> None:
            self.report.rollouts += fields["n"]
            evaluation = self.scored.get(fields["version"])
            successes = (
                int(sum(evaluation.scores))
                if evaluation is not None
                else round(fields["score"] * fields["n"])
            )
            self._phase(phase, "val", str(fields["version"]), fields["n"], successes)

        return scored

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

    def _run(self, title: str, call: Callable[[Callable[[int, int], None]], Evaluation]) -> Evaluation:
        evaluation = with_progress(self.console, title, call)
        self.evaluations.append((title, evaluation))
        self.report.rollouts += evaluation.n
        return evaluation


def _no_library_progress_bars() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


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
