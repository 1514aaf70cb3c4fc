"""A stream worker's Prometheus metrics (``/metrics`` of ``agentstream worker``), read on scrape
from its :class:`~.outputs.WorkerStats` and its status file; the agents never touch Prometheus.

(``streams/metrics.py`` is something else: the per-version reward metrics the promoter decides on.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

from agentstream.process.metrics import (
    CallbackCollector,
    OpsServer,
    Readiness,
    counter,
    gauge,
    start_ops_server,
)
from agentstream.process.status import read_status
from agentstream.schemas import PromotionDecision
from agentstream.settings import Settings
from agentstream.topics.catalogue import REWARDS, ROLLOUT_EVENTS, SPANS
from agentstream.topics.lag import lag_collector

from .outputs import WorkerStats

#: WorkerStats counter -> (metric name without ``_total``, help)
_COUNTERS = {
    "events": ("agentstream_worker_events", "Source records processed."),
    "triplets": ("agentstream_worker_triplets", "Triplets sent."),
    "tasks": ("agentstream_worker_tasks", "Tasks sent (retries, timeouts)."),
    "dead_lettered": ("agentstream_worker_dead_letters", "Source records sent to the dead-letter topic."),
    "late_rewards_dropped": ("agentstream_worker_late_rewards_dropped", "Rewards past the late horizon."),
    "resent": ("agentstream_worker_resent", "Outputs re-sent after a broker lost them."),
    "timers_fired": ("agentstream_worker_timers_fired", "Attempt timeouts fired."),
    "metrics_emitted": ("agentstream_worker_metrics_emitted", "Per-version metric partials sent."),
}


def worker_families(stats: WorkerStats, data_dir: Path) -> Iterable[Metric]:
    """The worker's counters, plus what its status file says (assignment, re-reads)."""
    for field, (name, documentation) in _COUNTERS.items():
        yield counter(name, documentation, float(getattr(stats, field, 0)))
    status = read_status(data_dir, os.getpid()) or {}
    yield gauge(
        "agentstream_worker_assigned_partitions",
        "Partitions of the rollout-events topic assigned to this worker.",
        len(status.get("assigned_partitions", [])),
    )
    yield counter(
        "agentstream_worker_gap_rereads", "Offset gaps re-read from the broker.", status.get("gap_rereads", 0)
    )


def worker_registry(settings: Settings, stats: WorkerStats) -> CollectorRegistry:
    """A registry with the worker's counters and its consumer group's lag on the source topics."""
    registry = CollectorRegistry()
    registry.register(CallbackCollector("worker", lambda: worker_families(stats, settings.data_dir)))
    sources = [settings.topic(t.name) for t in (SPANS, REWARDS, ROLLOUT_EVENTS)]
    registry.register(lag_collector(settings, {settings.streams.app_id: sources}))
    return registry


def worker_readiness(settings: Settings) -> Readiness:
    """Ready when the worker's status file (rewritten every second) says so: partitions assigned,
    no rebalance or table recovery under way."""

    def ready() -> str | None:
        status = read_status(settings.data_dir, os.getpid())
        if status is None:
            return "the worker has not started yet"
        if not status.get("ready"):
            return "the worker is joining its group or recovering its tables"
        return None

    return ready


def start_worker_ops(settings: Settings, stats: WorkerStats) -> OpsServer | None:
    """Start a stream worker's operations endpoint."""
    return start_ops_server(
        settings.metrics,
        settings.data_dir,
        component="worker",
        registry=worker_registry(settings, stats),
        ready=worker_readiness(settings),
    )


def promoter_families(decisions: Sequence[PromotionDecision]) -> Iterable[Metric]:
    """Decisions the promoter recorded, by action."""
    family = CounterMetricFamily(
        "agentstream_promoter_decisions", "Promotion decisions recorded, by action.", labels=["action"]
    )
    by_action: dict[str, int] = {}
    for decision in list(decisions):  # a copy: the controller appends while we read
        action = str(decision.action)
        by_action[action] = by_action.get(action, 0) + 1
    for action, n in sorted(by_action.items()):
        family.add_metric([action], n)
    yield family


def start_promoter_ops(settings: Settings, decisions: Sequence[PromotionDecision]) -> OpsServer | None:
    """Start the promoter's operations endpoint (its collector reads ``decisions``)."""
    registry = CollectorRegistry()
    registry.register(CallbackCollector("promoter", lambda: promoter_families(decisions)))
    return start_ops_server(settings.metrics, settings.data_dir, component="promoter", registry=registry)
