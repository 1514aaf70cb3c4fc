"""The A/B promotion controller: reads per-version metrics, decides about every candidate, and
moves labels.

    metrics topic ──▶ MetricsBook ──▶ PromotionPolicy.decide ──▶ decisions topic (with evidence)
    resource-labels ─▶ which version is production / candidate        └──▶ label moves (promote, rollback)

For each resource with both a ``production`` and a ``candidate`` label on different versions, both
arms are compared over the same period: the windows since the candidate label was last moved
(runners split traffic between the two labels by their weights, so both arms saw the same mix of
tasks over that period). Only traffic counts: the rollout modes of ``promotion.modes`` (``train``,
``prod``), not the pinned evaluation rollouts (``val``, ``test``) a trainer runs against a version,
which do not follow the split. The test is in :mod:`.promotion_policy`: by default an mSPRT, whose
error rate holds however often this controller looks.

Every decision is a ``PromotionDecision`` on the decisions topic before any label moves, and the
label move names the decision: promote points ``production`` at the candidate and removes the
``candidate`` label; rollback removes the ``candidate`` label (all traffic back to production).
Holds are recorded when there is new evidence, at most every ``hold_every_seconds``. Decision ids
are deterministic (resource, candidate, action, sample counts), so a restarted controller that
decides again on the same evidence writes the same id, which the sink keeps once.

Run exactly one controller per cluster (``agentstream promoter``; ``agentstream up`` starts one).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from agentstream.resources.store import ResourceStore
from agentstream.schemas import (
    CANDIDATE,
    PRODUCTION,
    PromotionAction,
    PromotionDecision,
    ResourceLabel,
    VersionMetrics,
)
from agentstream.settings import Settings
from agentstream.topics.catalogue import DECISIONS, METRICS, TopicSpec
from agentstream.topics.io import RecordWriter, TopicReader

from .metrics_export import start_promoter_ops
from .promotion_policy import ArmStats, MetricsBook, PromotionPolicy, Verdict

logger = logging.getLogger(__name__)

METRIC = "success_rate"


@dataclass
class _Experiment:
    """What was last recorded for one candidate (to rate-limit holds)."""

    evidence: tuple[int, int] = (-1, -1)
    recorded_at: float = 0.0


class PromotionController:
    """Decides about candidates from the live per-version metrics.

    Args:
        settings: Kafka and the ``promotion`` settings.
        policy: the decision rule; default from ``settings.promotion``.
        store: resources (labels are read and moved through it); default: one of its own.
    """

    def __init__(
        self, settings: Settings, policy: PromotionPolicy | None = None, *, store: ResourceStore | None = None
    ) -> None:
        self.settings = settings.resolved()
        config = self.settings.promotion
        self.config = config
        self.policy = policy or PromotionPolicy(
            margin=config.margin,
            alpha=config.alpha,
            min_samples=config.min_samples,
            max_samples=config.max_samples,
            rollback_margin=config.rollback_margin,
            test=config.test,
            tau=config.tau,
        )
        self._owns_store = store is None
        self.store = store or ResourceStore(self.settings, who="promoter")
        self.book = MetricsBook(modes=config.modes)
        self._book_lock = threading.Lock()
        self._metrics = TopicReader(self.settings, (METRICS,), self._on_metrics, name="promoter-metrics")
        self._experiments: dict[tuple[str, int, int], _Experiment] = {}
        self._writer = RecordWriter(self.settings)
        self.decisions: list[PromotionDecision] = []

    # ---- lifecycle -----------------------------------------------------------------------------------
    def open(self) -> PromotionController:
        self.store.open()
        self._metrics.start()
        self._metrics.wait_caught_up(30.0)
        return self

    def close(self) -> None:
        self._metrics.close()
        if self._owns_store:
            self.store.close()
        self._writer.close()

    def run(self, stop: threading.Event) -> None:
        """Evaluate every ``interval_seconds`` until ``stop`` is set."""
        self.open()
        try:
            while not stop.wait(self.config.interval_seconds):
                try:
                    self.evaluate()
                except Exception:  # one bad round must not stop the controller
                    logger.exception("promotion round failed")
        finally:
            self.close()

    def __enter__(self) -> PromotionController:
        return self.open()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ---- one round -----------------------------------------------------------------------------------
    def evaluate(self) -> list[PromotionDecision]:
        """Decide about every current candidate; returns the decisions recorded this round."""
        recorded = []
        for name in self.store.names():
            labels = self.store.state(name).labels
            production, candidate = labels.get(PRODUCTION), labels.get(CANDIDATE)
            if (
                production is None
                or candidate is None
                or production.version is None
                or candidate.version is None
            ):
                continue
            if production.version == candidate.version:
                continue
            decision = self._decide(name, production, candidate)
            if decision is not None:
                recorded.append(decision)
        return recorded

    def _decide(
        self, name: str, production: ResourceLabel, candidate: ResourceLabel
    ) -> PromotionDecision | None:
        assert production.version is not None and candidate.version is not None
        since = candidate.moved_at
        with self._book_lock:
            cand = self.book.stats(name, candidate.version, since)
            prod = self.book.stats(name, production.version, since)
        verdict = self.policy.decide(cand, prod)
        key = (name, candidate.version, production.version)
        experiment = self._experiments.setdefault(key, _Experiment())
        evidence = (cand.n, prod.n)
        now = time.monotonic()
        if verdict.action == "hold":
            if (
                evidence == experiment.evidence
                or now - experiment.recorded_at < self.config.hold_every_seconds
            ):
                return None
        experiment.evidence, experiment.recorded_at = evidence, now
        decision = self._record(
            name, verdict.action, candidate.version, production.version, cand, prod, since, verdict
        )
        if decision.action is PromotionAction.PROMOTE:
            self.store.label(
                name, PRODUCTION, candidate.version, reason=decision.reason, decision_id=decision.decision_id
            )
            self.store.label(name, CANDIDATE, None, reason="promoted", decision_id=decision.decision_id)
        elif decision.action is PromotionAction.ROLLBACK:
            self.store.label(name, CANDIDATE, None, reason=decision.reason, decision_id=decision.decision_id)
        if decision.action is not PromotionAction.HOLD:
            logger.info("%s: %s v%d (%s)", name, decision.action, candidate.version, decision.reason)
        return decision

    def _record(
        self,
        name: str,
        action: str,
        candidate: int,
        production: int,
        cand: ArmStats,
        prod: ArmStats,
        since: int,
        verdict: Verdict,
    ) -> PromotionDecision:
        decision = PromotionDecision(
            decision_id=f"{name}:v{candidate}:vs:v{production}:{action}:{cand.n}:{prod.n}",
            resource_name=name,
            action=PromotionAction(action),
            candidate_version=candidate,
            production_version=production,
            metric=METRIC,
            test=verdict.test,
            candidate_n=cand.n,
            candidate_successes=cand.successes,
            production_n=prod.n,
            production_successes=prod.successes,
            difference=verdict.difference,
            statistic=verdict.statistic,
            p_value=verdict.p_value,
            margin=self.policy.margin,
            alpha=self.policy.alpha,
            min_samples=self.policy.min_samples,
            evidence_since=since,
            reason=verdict.reason,
            decided_at=int(time.time() * 1_000_000),
        )
        self._writer.write(DECISIONS, name, decision)
        self.decisions.append(decision)
        return decision

    # ---- Kafka ---------------------------------------------------------------------------------------
    def _on_metrics(self, spec: TopicSpec, key: bytes | None, record: Any) -> None:
        if isinstance(record, VersionMetrics):
            with self._book_lock:
                self.book.add(record)


def run_promoter(settings: Settings, stop: threading.Event) -> None:
    """``agentstream promoter``: the controller until ``stop``."""
    controller = PromotionController(settings)
    with start_promoter_ops(controller.settings, controller.decisions) or contextlib.nullcontext():
        controller.run(stop)
