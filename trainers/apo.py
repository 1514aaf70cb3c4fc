"""APO: automatic prompt optimisation of a prompt-template resource, from the triplet stream.

    trainer = APOTrainer(APOConfig(resource_name="support-prompt"), settings, evaluator=evaluator,
                         val_items=val_tickets, optimizer=openai.OpenAI(base_url=...))
    result = trainer.train()     # the winner is published, labelled ``candidate``, with its lineage

Beam search over prompt versions (Agent Lightning's APO, after ProTeGi). Each round expands every
beam member ``branch_factor`` times, alternating two ways of proposing a child:

* **textual gradient**: low-reward triplets of the parent (the model's output and the grader's
  feedback) go to an optimizer model, which writes a critique; a second call rewrites the
  instruction to address it. Any OpenAI-compatible model works, chat or completions; a base model
  is driven by a few-shot meta-prompt.
* **demonstration bootstrapping**: few-shot examples drawn from high-reward triplets (the inputs and
  responses that earned the reward), spread over distinct responses; this works even when the
  task model is a base model that follows examples rather than instructions.

Children are published as versions (so runners can be pinned to them) and scored by real
evaluation rollouts on the validation split (:mod:`.evaluation`); a child survives only if it beats
its parent there, and the beam keeps the best ``beam_width``. The best version found, if it beats
the starting version, is published once more with its full lineage (parent, triplet window,
scores) and labelled ``candidate``, which puts it into the A/B split.

A template is treated as *instruction* + *demonstrations* + *query* (the query starts at the first
line with a ``{{variable}}``); versions this trainer publishes record the parts in their config.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentstream.resources.store import ResourceStore
from agentstream.retrieval.select import DEMONSTRATIONS
from agentstream.schemas import CANDIDATE, PRODUCTION, ResourceVersion, TemplateError, Triplet, check_template
from agentstream.schemas.resource_version import content_hash
from agentstream.settings import Settings

from .apo_retrieval import RETRIEVAL_KEYS, grid_entry, retrieval_config, retrieval_unavailable
from .apo_templates import (
    CRITIQUE_PROMPT,
    EDIT_PROMPT,
    assemble,
    render_demo,
    response_class,
    split_template,
    template_regex,
)
from .demonstrations import Example, read_examples, reward_of
from .evaluation import Evaluation, RolloutEvaluator

logger = logging.getLogger(__name__)

__all__ = [
    "APOConfig",
    "APOResult",
    "APOTrainer",
    "Candidate",
    "Example",
    "reward_of",
    "split_template",
    "template_regex",
]


@dataclass
class APOConfig:
    """How :class:`APOTrainer` searches (defaults sized for a small CPU model)."""

    resource_name: str
    #: the version to start from: a number or a label
    start_from: str = PRODUCTION
    beam_width: int = 2
    branch_factor: int = 2
    rounds: int = 1
    #: failures shown to the optimizer per critique
    gradient_batch_size: int = 4
    #: validation items used per score (None: all)
    val_batch_size: int | None = None
    #: demonstrations per bootstrapped candidate (0: none are proposed)
    demos: int = 8
    demo_min_reward: float = 1.0
    #: which reward of a triplet ranks its call (demonstrations, failures): "sum" adds up its reward
    #: dimensions (a call routed right *and* resolved is 1.0 + 1.0), "primary" is the triplet's scalar
    #: ``reward``, any other value names one dimension
    reward_of: str = "sum"
    #: the textual-gradient path is skipped without an optimizer client
    optimizer_model: str = "gpt-4.1-mini"
    #: "chat" for instruction-tuned optimizers, "completions" for base models
    optimizer_api: str = "chat"
    max_prompt_chars: int = 8000
    #: most recent triplets of the resource considered
    triplet_window: int = 5000
    #: rollout modes whose triplets are learned from (never the evaluation splits)
    modes: tuple[str, ...] = ("train", "prod")
    label: str | None = CANDIDATE  # None: publish the winner unlabelled (the caller runs the A/B)
    #: a child is accepted only if its validation score beats its parent's by more than this
    min_gain: float = 0.0
    #: the demonstration pool (:mod:`.demonstrations`) that "retrieval" candidates read per request;
    #: ``None``: no retrieval candidates
    retrieval_pool: str | None = None
    #: retrieval settings proposed in turn (see :mod:`agentstream.retrieval.select`); ``instruction=0``
    #: drops the instruction (bundled model, pool of 150: 87% on validation without it, 73% with it);
    #: k=4 reads half the prompt of k=8 for about the same success (test split, pool of 200: 88% each);
    #: the index is MiniLM's unless an entry says ``index=bm25`` (leave-one-out on the training
    #: split, nearest neighbour right: 96.5% against BM25's 89.0%)
    retrieval_grid: tuple[str, ...] = (
        "k=4,instruction=0",
        "k=8,instruction=0",
        "k=8,per_outcome=4,instruction=0",
        "k=4,index=bm25,instruction=0",
        "k=8",
    )
    #: retrieval candidates end the prompt with what every good response starts with (the call up
    #: to its first argument's value), so a small model only has to choose the value
    prime_response: bool = True
    seed: int = 0


@dataclass
class Candidate:
    version: ResourceVersion
    instruction: str
    demos: list[str]
    query: str
    strategy: str
    parent: int | None
    score: float | None = None
    evaluation: Evaluation | None = None


@dataclass
class APOResult:
    """What a run did: the baseline, every scored candidate, the published winner (if any)."""

    baseline: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    winner: ResourceVersion | None = None
    winner_score: float | None = None
    triplets: int = 0
    wall_s: float = 0.0


class APOTrainer:
    """Improves a prompt-template resource; see the module docstring.

    Args:
        config: the search.
        settings: Kafka (resolved).
        evaluator: runs validation rollouts (runners and stream workers must be up).
        val_items: validation task inputs (never the test split).
        optimizer: an ``openai.OpenAI`` client for the textual-gradient path (``None``: skipped).
        store: the resource store (default: one of its own).
        on_event: progress callback ``(message, fields)`` (the demo draws progress bars from it).
        scored: validation results by version from earlier runs on the same items (reused, and
            filled in by this run), so a version is never evaluated twice.
    """

    def __init__(
        self,
        config: APOConfig,
        settings: Settings,
        *,
        evaluator: RolloutEvaluator,
        val_items: Sequence[Any],
        optimizer: Any = None,
        store: ResourceStore | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        scored: dict[int, Evaluation] | None = None,
    ) -> None:
        if not val_items:
            raise ValueError("APO needs validation items to score candidates")
        self.config = config
        self.settings = settings.resolved()
        self.evaluator = evaluator
        self.val_items = list(val_items)
        self.optimizer = optimizer
        self._owns_store = store is None
        self.store = store or ResourceStore(self.settings, who="apo")
        self.on_event = on_event or (lambda message, fields: None)
        self.rng = random.Random(config.seed)
        self.run_id = uuid.uuid4().hex[:8]
        self._triplets: dict[str, Triplet] = {}
        self.scored = scored if scored is not None else {}
        self._grid_turn = 0

    # ---- the search ----------------------------------------------------------------------------------
    def train(self) -> APOResult:
        started = time.monotonic()
        cfg = self.config
        self.store.open()
        try:
            start = self.store.get(cfg.resource_name, cfg.start_from)
            examples = self._examples()
            self.on_event("triplets", {"count": len(examples), "start": start.version})
            baseline = self._as_candidate(start, "start", None)
            self._score(baseline)
            result = APOResult(baseline, triplets=len(examples))
            beam = [baseline]
            best = baseline
            strategies = self.strategies()
            seen = {start.content_hash}
            for round_index in range(1, cfg.rounds + 1):
                children: list[Candidate] = []
                for parent in beam:
                    for branch in range(cfg.branch_factor):
                        strategy = strategies[branch % len(strategies)]
                        child = self._propose(parent, strategy, examples, round_index, seen)
                        if child is None:
                            continue
                        self._score(child)
                        result.candidates.append(child)
                        assert child.score is not None and parent.score is not None
                        accepted = child.score > parent.score + cfg.min_gain
                        self.on_event(
                            "candidate",
                            {
                                "round": round_index,
                                "version": child.version.version,
                                "strategy": strategy,
                                "score": child.score,
                                "parent_score": parent.score,
                                "accepted": accepted,
                            },
                        )
                        if accepted:
                            children.append(child)
                pool = sorted(beam + children, key=lambda c: c.score or 0.0, reverse=True)
                beam = pool[: cfg.beam_width]
                if beam[0].score is not None and best.score is not None and beam[0].score > best.score:
                    best = beam[0]
            if best is not baseline:
                result.winner = self._publish_winner(best, baseline, examples)
                result.winner_score = best.score
            result.wall_s = time.monotonic() - started
            self.on_event(
                "done",
                {
                    "winner": result.winner.version if result.winner else None,
                    "score": result.winner_score,
                    "baseline": baseline.score,
                },
            )
            return result
        finally:
            if self._owns_store:
                self.store.close()

    def strategies(self) -> list[str]:
        """The proposal strategies, in the order branches take them: retrieval (with a pool),
        demonstration bootstrapping, textual gradients (with an optimizer)."""
        found = ["retrieval"] if self.config.retrieval_pool else []
        found += ["demos"] if self.config.demos > 0 else []
        if self.optimizer is not None:
            found.append("gradient")
        if not found:
            raise ValueError("APO cannot propose: no retrieval_pool, demos=0 and no optimizer")
        return found

    # ---- data ----------------------------------------------------------------------------------------
    def _examples(self) -> list[Example]:
        """The resource's triplets (newest revision of each), as (variables, response, reward)."""
        cfg = self.config
        return read_examples(
            self.settings,
            self.store,
            cfg.resource_name,
            modes=cfg.modes,
            window=cfg.triplet_window,
            which_reward=cfg.reward_of,
        )

    # ---- proposals -----------------------------------------------------------------------------------
    def _as_candidate(self, version: ResourceVersion, strategy: str, parent: int | None) -> Candidate:
        assert version.template is not None
        if "apo.instruction" in version.config:
            instruction = version.config["apo.instruction"]
            demos = json.loads(version.config.get("apo.demos", "[]"))
            query = version.config["apo.query"]
        else:
            instruction, query = split_template(version.template)
            demos = []
        return Candidate(version, instruction, demos, query, strategy, parent)

    def _propose(
        self, parent: Candidate, strategy: str, examples: list[Example], round_index: int, seen: set[str]
    ) -> Candidate | None:
        cfg = self.config
        instruction, demos = parent.instruction, parent.demos
        lineage = {
            "trainer": "apo",
            "apo.run": self.run_id,
            "apo.round": str(round_index),
            "apo.strategy": strategy,
            "apo.stage": "evaluation",
        }
        # a retrieving parent's children keep retrieving, with its settings, unless they change them
        retrieval = {k: v for k, v in parent.version.config.items() if k.startswith(RETRIEVAL_KEYS)}
        if strategy == "retrieval":
            good = [e for e in examples if e.reward is not None and e.reward >= cfg.demo_min_reward]
            reason = retrieval_unavailable(self.store, cfg.retrieval_pool, good)
            if reason is not None:
                self.on_event("skip", {"strategy": strategy, "reason": reason})
                return None
            assert cfg.retrieval_pool is not None
            for _ in cfg.retrieval_grid:  # the next setting that is not the parent's own
                entry = cfg.retrieval_grid[self._grid_turn % len(cfg.retrieval_grid)]
                self._grid_turn += 1
                proposed = retrieval_config(entry, cfg.retrieval_pool, good, prime=cfg.prime_response)
                # instruction=0: a base model follows the examples; the instruction may only bias it
                kept = "" if grid_entry(entry).get("instruction") == "0" else parent.instruction
                if (proposed, kept) != (retrieval, parent.instruction):
                    break
            retrieval, instruction, demos = proposed, kept, []  # demonstrations: retrieved per request
            lineage["apo.retrieval"] = entry
        elif strategy == "demos":
            demos = self._bootstrap_demos(parent, examples)
            if not demos:
                self.on_event(
                    "skip", {"strategy": strategy, "reason": "no high-reward triplets to learn from"}
                )
                return None
        else:
            critique, rewritten = self._textual_gradient(parent, examples)
            if rewritten is None:
                return None
            instruction = rewritten
            lineage["apo.critique"] = critique[:500]
        variables = list(parent.version.variables)
        if retrieval and DEMONSTRATIONS not in variables:
            variables.insert(0, DEMONSTRATIONS)
        template = assemble(
            instruction, [*demos, *(["{{" + DEMONSTRATIONS + "}}"] if retrieval else [])], parent.query
        )
        if len(template) > cfg.max_prompt_chars:
            self.on_event(
                "skip", {"strategy": strategy, "reason": f"{len(template)} chars > max_prompt_chars"}
            )
            return None
        try:
            check_template(template, variables)
        except TemplateError as e:  # an edit that dropped or invented a placeholder
            self.on_event("skip", {"strategy": strategy, "reason": str(e)})
            return None
        config = {
            "apo.instruction": instruction,
            "apo.demos": json.dumps(demos),
            "apo.query": parent.query,
            **retrieval,
        }
        if content_hash("prompt_template", template, None, config) in seen:
            self.on_event("skip", {"strategy": strategy, "reason": "the same prompt was already proposed"})
            return None
        version = self.store.publish(
            cfg.resource_name,
            template=template,
            variables=variables,
            config=config,
            parent_version=parent.version.version,
            lineage=lineage,
        )
        seen.add(version.content_hash)
        return Candidate(version, instruction, demos, parent.query, strategy, parent.version.version)

    def _bootstrap_demos(self, parent: Candidate, examples: list[Example]) -> list[str]:
        good = [e for e in examples if e.reward is not None and e.reward >= self.config.demo_min_reward]
        by_input: dict[str, Example] = {}
        for e in good:
            by_input.setdefault(json.dumps(e.values, sort_keys=True), e)
        # spread over distinct responses (e.g. one per queue), then fill up at random
        groups: dict[str, list[Example]] = {}
        for e in by_input.values():
            groups.setdefault(response_class(e.response), []).append(e)
        for members in groups.values():
            self.rng.shuffle(members)
        chosen: list[Example] = []
        while len(chosen) < self.config.demos and any(groups.values()):
            for key in sorted(groups):
                if groups[key] and len(chosen) < self.config.demos:
                    chosen.append(groups[key].pop())
        self.rng.shuffle(chosen)
        return [render_demo(parent.query, e.values, e.response) for e in chosen]

    def _textual_gradient(self, parent: Candidate, examples: list[Example]) -> tuple[str, str | None]:
        version = str(parent.version.version)
        failures = [e for e in examples if e.version == version and (e.reward is None or e.reward < 1.0)]
        if not failures:
            failures = [e for e in examples if e.reward is not None and e.reward < 1.0]
        if not failures:
            self.on_event("skip", {"strategy": "gradient", "reason": "no failures to learn from"})
            return "", None
        batch = self.rng.sample(failures, min(self.config.gradient_batch_size, len(failures)))
        mistakes = "\n".join(
            f"- input: {json.dumps(e.values)[:300]}; output: {e.response.strip()[:200]}; "
            f"feedback: {e.feedback or 'reward ' + str(e.reward)}"
            for e in batch
        )
        critique = self._optimize(CRITIQUE_PROMPT.format(instruction=parent.instruction, mistakes=mistakes))
        rewritten = self._optimize(EDIT_PROMPT.format(instruction=parent.instruction, critique=critique))
        rewritten = rewritten.strip().strip('"').strip()
        if not rewritten or rewritten == parent.instruction:
            self.on_event("skip", {"strategy": "gradient", "reason": "the optimizer proposed no change"})
            return critique, None
        return critique, rewritten

    def _optimize(self, prompt: str) -> str:
        if self.config.optimizer_api == "chat":
            reply = self.optimizer.chat.completions.create(
                model=self.config.optimizer_model,
                messages=[{"role": "user", "content": prompt}],
                temperature=1.0,
                max_tokens=400,
                seed=self.rng.randrange(2**31),
            )
            return reply.choices[0].message.content or ""
        reply = self.optimizer.completions.create(
            model=self.config.optimizer_model,
            prompt=prompt,
            temperature=1.0,
            max_tokens=120,
            seed=self.rng.randrange(2**31),
        )
        # a base model often opens with blank lines: its answer is the first paragraph after them
        return (reply.choices[0].text or "").strip().split("\n\n")[0]

    # ---- scoring and publishing ----------------------------------------------------------------------
    def _score(self, candidate: Candidate) -> None:
        items = self.val_items
        if self.config.val_batch_size is not None and self.config.val_batch_size < len(items):
            items = self.rng.sample(items, self.config.val_batch_size)
        version = candidate.version.version
        known = self.scored.get(version)
        # a retrieving prompt's score depends on the pool it read, which grows live: score it again
        retrieves = "retrieval.pool" in candidate.version.config
        if known is not None and self.config.val_batch_size is None and not retrieves:
            candidate.evaluation, candidate.score = known, known.score
            return

        def progress(done: int, total: int) -> None:
            self.on_event("progress", {"version": version, "done": done, "total": total})

        evaluation = self.evaluator.evaluate(
            self.config.resource_name, version, items, mode="val", on_progress=progress
        )
        candidate.evaluation, candidate.score = evaluation, evaluation.score
        self.scored[version] = evaluation
        self.on_event(
            "scored",
            {
                "version": version,
                "strategy": candidate.strategy,
                "score": evaluation.score,
                "n": evaluation.n,
                "wall_s": evaluation.wall_s,
            },
        )

    def _publish_winner(
        self, best: Candidate, baseline: Candidate, examples: list[Example]
    ) -> ResourceVersion:
        window = (
            (min(e.created_at for e in examples), max(e.created_at for e in examples)) if examples else (0, 0)
        )
        assert best.evaluation is not None and baseline.evaluation is not None
        lineage = {
            "trainer": "apo",
            "apo.run": self.run_id,
            "apo.stage": "winner",
            "apo.strategy": best.strategy,
            "apo.evaluated_as": f"v{best.version.version}",
            "apo.parent_version": str(baseline.version.version),
            "val.score": f"{best.score:.4f}",
            "val.parent_score": f"{baseline.score:.4f}",
            "val.n": str(best.evaluation.n),
            "triplets.count": str(len(examples)),
            "triplets.from_us": str(window[0]),
            "triplets.to_us": str(window[1]),
            "apo.config": json.dumps({k: v for k, v in vars(self.config).items() if k != "resource_name"}),
        }
        winner = self.store.publish(
            self.config.resource_name,
            template=best.version.template,
            variables=list(best.version.variables),
            config=dict(best.version.config),
            parent_version=baseline.version.version,
            lineage=lineage,
            labels=[self.config.label] if self.config.label else [],
            reason=f"APO winner: val {best.score:.3f} vs {baseline.score:.3f}",
            force_new=True,
        )
        self.scored[winner.version] = best.evaluation  # same content, already scored
        return winner
