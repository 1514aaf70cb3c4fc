"""A streaming trainer's Prometheus metrics: windows trained, versions published, the last loss,
and its consumer group's lag on the triplets topic, read on scrape from the run's outcomes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

from agentstream.process.metrics import CallbackCollector, OpsServer, counter, gauge, start_ops_server
from agentstream.settings import Settings
from agentstream.topics.lag import lag_collector


class WindowOutcome(Protocol):
    """What is read of a :class:`~.runtime.WindowOutcome` (the runtime imports this module)."""

    status: str
    version: Any  # ResourceVersion | None


#: the lineage key weight trainers record their last logged loss under (trainers/weights.py)
LAST_LOSS = "metrics.train_loss_last"


def trainer_families(trainer: str, outcomes: Sequence[WindowOutcome]) -> Iterable[Metric]:
    """Counters and gauges over the windows this run has closed so far (``outcomes``)."""
    done = list(outcomes)  # a copy: the training thread appends while we read
    windows = CounterMetricFamily(
        "agentstream_trainer_windows",
        "Triplet windows closed, by outcome (published, already published, skipped).",
        labels=["trainer", "status"],
    )
    by_status: dict[str, int] = {}
    for outcome in done:
        status = outcome.status.split(":", 1)[0]
        by_status[status] = by_status.get(status, 0) + 1
    for status, n in sorted(by_status.items()):
        windows.add_metric([trainer, status], n)
    yield windows
    published = [o.version for o in done if o.version is not None and o.status == "published"]
    yield counter(
        "agentstream_trainer_published_versions",
        "Resource versions this trainer published.",
        len(published),
        trainer=trainer,
    )
    if published:
        yield gauge(
            "agentstream_trainer_last_version",
            "The version number last published.",
            published[-1].version,
            trainer=trainer,
        )
    losses = [
        o.version.lineage[LAST_LOSS] for o in done if o.version is not None and LAST_LOSS in o.version.lineage
    ]
    if losses:
        yield gauge(
            "agentstream_trainer_last_loss",
            "The last training loss logged.",
            float(losses[-1]),
            trainer=trainer,
        )


def start_trainer_ops(
    settings: Settings, trainer: str, group_id: str, topic: str, outcomes: Sequence[WindowOutcome]
) -> OpsServer | None:
    """Start a streaming trainer's operations endpoint (its collectors read ``outcomes``)."""
    registry = CollectorRegistry()
    registry.register(CallbackCollector("trainer", lambda: trainer_families(trainer, outcomes)))
    registry.register(lag_collector(settings, {group_id: [topic]}))
    return start_ops_server(settings.metrics, settings.data_dir, component="trainer", registry=registry)
