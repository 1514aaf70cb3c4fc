"""The operations endpoint (auth, health, readiness) and the metric names the Grafana dashboard uses."""

from __future__ import annotations

import json
import re
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from agentstream.process.metrics import CallbackCollector, OpsServer, OpsStatus, process_collector, scrape
from agentstream.producers.attempts import RunnerStats
from agentstream.producers.delivery import DeliveryStats
from agentstream.producers.metrics import DeliveryCollector, runner_families
from agentstream.settings import Settings
from agentstream.sinks.metrics import freshness_family, stats_families
from agentstream.sinks.writer import SinkStats
from agentstream.streams.metrics_export import promoter_families, worker_families
from agentstream.streams.outputs import WorkerStats
from agentstream.topics.lag import PartitionLag, lag_family
from agentstream.trainers.metrics import LAST_LOSS, trainer_families

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "agentstream.json"


def exported_names(tmp_path: Path) -> set[str]:
    """Every sample name our collectors export, each fed counters that are non-zero."""
    settings = Settings(data_dir=tmp_path)
    sink = SinkStats(records=3, dead_lettered=1)
    sink.rows["spans"] = 3
    stream: Any = SimpleNamespace(
        stats=DeliveryStats(submitted=2, redacted={"email": 1}),
        settings=settings,
        _worker=SimpleNamespace(_queue=deque([1])),
    )
    runner: Any = SimpleNamespace(stats=RunnerStats(received=1), worker_id="w1")
    version = SimpleNamespace(version=3, lineage={LAST_LOSS: "0.25"})
    outcomes: Any = [SimpleNamespace(status="published", version=version)]
    decisions: Any = [SimpleNamespace(action="promote")]
    sources = {
        "sink": lambda: stats_families(sink),
        "freshness": lambda: [freshness_family({"spans": 1.5})],
        "lag": lambda: [lag_family([PartitionLag("g", "t", 0, None, 0, 5)])],
        "worker": lambda: worker_families(WorkerStats(events=1), tmp_path),
        "runner": lambda: runner_families(runner),
        "trainer": lambda: trainer_families("sft", outcomes),
        "promoter": lambda: promoter_families(decisions),
    }
    registry = CollectorRegistry()
    for name, collect in sources.items():
        registry.register(CallbackCollector(name, collect))
    registry.register(DeliveryCollector(stream))
    registry.register(process_collector("test", 0.0))
    return {sample.name for family in registry.collect() for sample in family.samples}


def test_every_metric_the_grafana_dashboard_queries_is_exported(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"agentstream_[a-z_]+", target["expr"])
    }
    assert len(queried) > 20
    exported = exported_names(tmp_path)
    assert queried - exported == set()
    assert all(re.fullmatch(r"agentstream_[a-z]+_[a-z_]+", name) for name in exported)


def test_metrics_need_the_token_and_health_needs_none(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(process_collector("sink", 1.0))
    reasons: list[str | None] = ["migrating the tables"]
    with OpsServer(
        registry, token="s3cret", component="sink", ready=lambda: reasons[0], data_dir=tmp_path
    ) as server:
        assert scrape(f"{server.url}/metrics", None)[0] == 401
        assert scrape(f"{server.url}/metrics", "s3creT")[0] == 401
        assert scrape(f"{server.url}/metrics", "s3cret-and-more")[0] == 401
        status, body = scrape(f"{server.url}/metrics", "s3cret")
        assert status == 200 and 'agentstream_process_up{component="sink"} 1.0' in body
        assert scrape(f"{server.url}/healthz", None) == (200, "ok\n")
        assert scrape(f"{server.url}/readyz", None) == (503, "migrating the tables\n")
        reasons[0] = None
        assert scrape(f"{server.url}/readyz", None) == (200, "ready\n")
        # the URL is advertised for `agentstream status`, and withdrawn at stop
        assert [(s.component, s.url) for s in OpsStatus.live(tmp_path)] == [("sink", server.url)]
    assert OpsStatus.live(tmp_path) == []


def test_a_failing_collector_costs_only_its_own_metrics() -> None:
    def broken() -> list[Any]:
        raise RuntimeError("Kafka is down")

    registry = CollectorRegistry()
    registry.register(CallbackCollector("lag", broken))
    registry.register(process_collector("worker", 1.0))
    names = {s.name for family in registry.collect() for s in family.samples}
    assert names == {"agentstream_process_start_time_seconds", "agentstream_process_up"}


def test_lag_counts_from_the_start_when_nothing_is_committed() -> None:
    assert PartitionLag("g", "t", 0, None, low=2, high=10).lag == 8
    assert PartitionLag("g", "t", 0, 7, low=2, high=10).lag == 3
    assert PartitionLag("g", "t", 0, 0, low=2, high=10).lag == 8  # below the start: retention removed it
