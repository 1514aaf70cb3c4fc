"""The sink's Prometheus metrics, read on scrape from its :class:`~.writer.SinkStats`, the consumer
group's lag and ClickHouse itself (freshness), so the insert path is never touched."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agentstream.process.metrics import (
    CallbackCollector,
    OpsServer,
    Readiness,
    counter,
    gauge,
    start_ops_server,
)
from agentstream.settings import Settings
from agentstream.topics.lag import lag_collector

from .batch import SINK_TABLES
from .writer import SinkStats

#: table -> its event-time column: freshness is how old the newest row's event is
FRESHNESS_COLUMNS = {
    "spans": "end_time",
    "rewards": "timestamp",
    "rollout_events": "timestamp",
    "triplets": "created_at",
}

#: SinkStats counter -> (metric name without ``_total``, help)
_COUNTERS = {
    "records": ("agentstream_sink_records", "Records the sink consumed."),
    "dead_lettered": ("agentstream_sink_dead_letters", "Records the sink sent to the dead-letter topic."),
    "retries": ("agentstream_sink_retries", "Insert attempts that failed and were retried."),
    "flushes": ("agentstream_sink_flushes", "Batches inserted."),
    "replay_duplicates_dropped": (
        "agentstream_sink_replay_duplicates_dropped",
        "Re-sent records the sink recognised and dropped.",
    ),
    "already_stored_skipped": (
        "agentstream_sink_already_stored_skipped",
        "Records skipped because their offset was already stored.",
    ),
    "gaps_accepted": ("agentstream_sink_gaps_accepted", "Offset gaps accepted after verification."),
    "stalls_detected": (
        "agentstream_sink_stalls_detected",
        "Times a partition's lag grew while its insert lane was idle.",
    ),
}


def sink_topics(settings: Settings) -> list[str]:
    """Every topic the sink consumes."""
    return [settings.topic(table.topic.name) for table in SINK_TABLES]


def freshness(client: Any) -> dict[str, float]:
    """Seconds from the newest event time to now, per table that has rows (event time to insert:
    it grows while nothing new arrives, so it also shows a stalled pipeline)."""
    parts = [
        f"SELECT '{table}' AS t, count() AS n, dateDiff('millisecond', max({column}), now64(3)) / 1000 AS age "
        f"FROM {table}"
        for table, column in FRESHNESS_COLUMNS.items()
    ]
    rows = client.query(" UNION ALL ".join(parts)).result_rows
    return {str(table): max(0.0, float(age)) for table, n, age in rows if n}


def stats_families(stats: SinkStats) -> Iterable[Metric]:
    """The sink's counters as metric families (a consistent snapshot, under the stats lock)."""
    with stats.lock:
        values = {name: getattr(stats, name, 0) for name in _COUNTERS}
        rows = dict(stats.rows)
        last_flush = stats.last_flush_seconds
        assigned = stats.assigned
        stalled = getattr(stats, "stalled_partitions", 0)
    for field, (name, documentation) in _COUNTERS.items():
        yield counter(name, documentation, float(values[field] or 0))
    per_table = CounterMetricFamily("agentstream_sink_rows", "Rows inserted, per table.", labels=["table"])
    for table, n in sorted(rows.items()):
        per_table.add_metric([table], n)
    yield per_table
    yield gauge("agentstream_sink_flush_seconds", "Duration of the last insert.", last_flush)
    yield gauge("agentstream_sink_assigned_partitions", "Partitions assigned to this sink.", assigned)
    # helper C's stall detector may keep a count or the stalled partitions themselves
    count = len(stalled) if isinstance(stalled, (list, set, tuple, dict)) else stalled
    yield gauge(
        "agentstream_sink_stalled_partitions",
        "Partitions whose lag grows while their insert lane is idle.",
        float(count or 0),
    )


def freshness_family(ages: dict[str, float]) -> Metric:
    """``agentstream_sink_freshness_seconds{table}`` from :func:`freshness`'s answer."""
    family = GaugeMetricFamily(
        "agentstream_sink_freshness_seconds",
        "Age of the newest event stored in a table (event time to now).",
        labels=["table"],
    )
    for table, age in sorted(ages.items()):
        family.add_metric([table], age)
    return family


def freshness_collector(open_client: Callable[[], Any]) -> CallbackCollector:
    """``agentstream_sink_freshness_seconds{table}``: one query per scrape on a client opened on
    the first scrape (and reopened after an error)."""
    lock = threading.Lock()
    client: list[Any] = []

    def collect() -> Iterable[Metric]:
        with lock:  # clients are not safe for concurrent queries
            if not client:
                client.append(open_client())
            try:
                ages = freshness(client[0])
            except Exception:
                client.clear()
                raise
        return [freshness_family(ages)]

    return CallbackCollector("sink freshness", collect)


def sink_registry(
    settings: Settings, stats: SinkStats, open_client: Callable[[], Any] | None = None
) -> CollectorRegistry:
    """A registry with the sink's counters, its consumer group's lag and (given a way to open a
    ClickHouse client) table freshness."""
    registry = CollectorRegistry()
    registry.register(CallbackCollector("sink", lambda: stats_families(stats)))
    registry.register(lag_collector(settings, {settings.sink.group_id: sink_topics(settings)}))
    if open_client is not None:
        registry.register(freshness_collector(open_client))
    return registry


def sink_readiness(stats: SinkStats) -> Readiness:
    """Ready once the sink consumes: migrations applied and partitions assigned."""

    def ready() -> str | None:
        if stats.assigned <= 0:
            return "the sink has no partitions yet (starting or joining its consumer group)"
        return None

    return ready


def start_sink_ops(settings: Settings, stats: SinkStats) -> OpsServer | None:
    """Start the sink's operations endpoint (see :func:`~agentstream.process.metrics.start_ops_server`)."""
    from agentstream.clickhouse.connect import open_owner

    return start_ops_server(
        settings.metrics,
        settings.data_dir,
        component="sink",
        registry=sink_registry(settings, stats, lambda: open_owner(settings)),
        ready=sink_readiness(stats),
    )
