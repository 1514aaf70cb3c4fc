"""Prometheus metrics of the agent side: SDK delivery and runners, read on scrape.

The SDK runs inside your agent's process, so it never starts a server unless asked
(``AGENTSTREAM_SDK__METRICS_PORT``). To export from your own Prometheus setup instead::

    from prometheus_client import REGISTRY
    from agentstream.producers.metrics import DeliveryCollector

    REGISTRY.register(DeliveryCollector(agentstream.client()))

Nothing here runs on the agent's thread or the delivery thread: the counters the delivery worker
keeps anyway are read when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from agentstream.process.metrics import CallbackCollector, OpsServer, counter, gauge, start_ops_server
from agentstream.settings import Settings
from agentstream.topics.catalogue import TASKS
from agentstream.topics.lag import lag_collector


class _Stream(Protocol):
    """What is read of an :class:`~.client.AgentStream` (typed here: the client imports this module)."""

    @property
    def stats(self) -> Any: ...  # DeliveryStats

    settings: Settings


class _Runner(Protocol):
    """What is read of a :class:`~.runner.Runner`."""

    stats: Any  # RunnerStats
    worker_id: str
    settings: Settings

    @property
    def client(self) -> _Stream: ...


#: DeliveryStats counter -> (metric name without ``_total``, help)
_DELIVERY = {
    "submitted": ("agentstream_sdk_records_submitted", "Records the agent emitted."),
    "delivered": ("agentstream_sdk_records_sent", "Records Kafka acknowledged."),
    "spooled": ("agentstream_sdk_records_spooled", "Records written to the local outage spool."),
    "replayed": ("agentstream_sdk_records_replayed", "Spooled records re-sent after an outage."),
    "dead_lettered": ("agentstream_sdk_dead_letters", "Records sent to the dead-letter topic."),
    "truncated": ("agentstream_sdk_records_truncated", "Records truncated to fit Kafka's size limit."),
    "outages": ("agentstream_sdk_outages", "Times the broker became unreachable (delivery failures)."),
    "window_replays": ("agentstream_sdk_window_replays", "Re-sends after a broker lost its log."),
    "spool_dropped": ("agentstream_sdk_spool_dropped", "Records dropped because the spool was full."),
    "quarantined": ("agentstream_sdk_spool_quarantined", "Unreadable spool segments quarantined."),
}

_RUNNER = {
    "received": ("agentstream_runner_tasks_received", "Task records received."),
    "succeeded": ("agentstream_runner_attempts_succeeded", "Attempts that succeeded."),
    "failed": ("agentstream_runner_attempts_failed", "Attempts that failed."),
    "released": ("agentstream_runner_attempts_released", "Attempts given back at shutdown."),
    "skipped": ("agentstream_runner_tasks_skipped", "Undecodable or already-run task records."),
}


class DeliveryCollector(Collector):
    """The SDK's delivery metrics of ``stream`` (an :class:`~.client.AgentStream`), labelled with
    its ``service``; register it in any ``CollectorRegistry``."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream

    def collect(self) -> Iterator[Metric]:
        stream = self._stream
        stats = stream.stats
        service = stream.settings.sdk.service_name
        for field, (name, documentation) in _DELIVERY.items():
            yield counter(name, documentation, float(getattr(stats, field, 0)), service=service)
        yield gauge(
            "agentstream_sdk_connected",
            "1 while Kafka is reachable.",
            float(stats.connected),
            service=service,
        )
        # the delivery worker's in-memory queue (a deque: len() is safe from any thread)
        queue = getattr(getattr(stream, "_worker", None), "_queue", None)
        if queue is not None:
            yield gauge(
                "agentstream_sdk_queue_depth_records",
                "Records waiting in memory for the delivery thread.",
                float(len(queue)),
                service=service,
            )
        yield gauge(
            "agentstream_sdk_spool_bytes",
            "Bytes of outage spool this client holds on disk.",
            float(getattr(stats, "spool_bytes", 0)),
            service=service,
        )
        redacted = CounterMetricFamily(
            "agentstream_sdk_redactions",
            "PII redactions in message content, by entity.",
            labels=["service", "entity"],
        )
        for entity, n in sorted(dict(getattr(stats, "redacted", {})).items()):
            redacted.add_metric([service, entity], n)
        yield redacted


def start_sdk_ops(stream: _Stream) -> OpsServer | None:
    """Serve ``stream``'s delivery metrics when ``sdk.metrics_port`` is set (opt-in), else None."""
    settings = stream.settings
    if settings.sdk.metrics_port is None:
        return None
    registry = CollectorRegistry()
    registry.register(DeliveryCollector(stream))
    config = settings.metrics.model_copy(update={"port": settings.sdk.metrics_port, "enabled": True})
    return start_ops_server(config, settings.data_dir, component="sdk", registry=registry)


def runner_families(runner: _Runner) -> Iterable[Metric]:
    """A runner's counters and gauges."""
    stats = runner.stats
    worker = runner.worker_id
    for field, (name, documentation) in _RUNNER.items():
        yield counter(name, documentation, float(getattr(stats, field)), worker=worker)
    yield gauge(
        "agentstream_runner_in_flight", "Attempts running now.", float(stats.in_flight), worker=worker
    )
    yield gauge(
        "agentstream_runner_assigned_partitions",
        "Task partitions assigned to this runner.",
        float(stats.assigned_partitions),
        worker=worker,
    )


def runner_registry(runner: _Runner) -> CollectorRegistry:
    """A runner's counters, its client's delivery metrics and its group's lag on the tasks topic."""
    settings = runner.settings
    registry = CollectorRegistry()
    registry.register(CallbackCollector("runner", lambda: runner_families(runner)))
    registry.register(DeliveryCollector(runner.client))
    registry.register(lag_collector(settings, {settings.runner.group_id: [settings.topic(TASKS.name)]}))
    return registry


def start_runner_ops(runner: _Runner) -> OpsServer | None:
    """Start a runner's operations endpoint (``runner.settings.metrics``)."""
    settings = runner.settings
    return start_ops_server(
        settings.metrics, settings.data_dir, component="runner", registry=runner_registry(runner)
    )
