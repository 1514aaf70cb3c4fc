"""Fixtures of the integration tests that share one pipeline run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agentstream.clickhouse.connect import connect
from agentstream.settings import Settings
from agentstream.topics.admin import ensure_topics
from tests.analytics_scenario import (
    MODEL,
    PRICE_INPUT_PER_MILLION,
    PRICE_OUTPUT_PER_MILLION,
    ScenarioFacts,
    run_scenario,
)
from tests.helpers import Broker, SinkProcess, WorkerProcess, wait_for


@dataclass
class AnalyticsData:
    """The scenario's history in ClickHouse, served by a running sink (its gateway) as in production."""

    settings: Settings
    facts: ScenarioFacts
    sink: SinkProcess

    def client(self) -> Any:
        return connect(self.settings)


@pytest.fixture(scope="session")
def analytics_data(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnalyticsData]:
    """The analytics scenario sent through broker, stream worker and sink into chDB, once per session."""
    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers,
        data_dir=tmp_path_factory.mktemp("analytics") / "data",
        topic_prefix=f"a{uuid.uuid4().hex[:10]}.",
        partitions=2,
        sink={"batch_max_seconds": 0.1, "retry_initial_seconds": 0.05, "retry_max_seconds": 0.5},
        sdk={"delivery_timeout_ms": 3000},
    )
    ensure_topics(settings)
    sink = SinkProcess(settings).start()
    worker = WorkerProcess(settings).start().wait_ready()
    try:
        facts = run_scenario(settings)
        client = connect(settings, write=True)
        client.command(
            "INSERT INTO model_prices (model, input_per_million, output_per_million) VALUES ({m:String}, {i:Float64}, {o:Float64})",
            parameters={"m": MODEL, "i": PRICE_INPUT_PER_MILLION, "o": PRICE_OUTPUT_PER_MILLION},
        )
        expected = len(facts.rollouts)

        def landed() -> bool:
            ended = client.query("SELECT count() FROM rollouts WHERE ended_at IS NOT NULL").result_rows[0][0]
            handoffs = client.query("SELECT count() FROM handoffs").result_rows[0][0]
            triplets = client.query("SELECT count() FROM triplets FINAL").result_rows[0][0]
            labels = client.query("SELECT count() FROM resource_labels").result_rows[0][0]
            # the per-version windows the worker emits every metrics_flush_seconds (the dashboard's A/B series)
            windowed = client.query("SELECT sum(rollouts) FROM version_metrics_by_window").result_rows[0][0]
            return (
                ended == expected
                and handoffs == len(facts.handoffs)
                and triplets >= facts.triplets
                and labels >= 3
                and windowed == expected
            )

        assert wait_for(landed, 120, interval=0.5), (
            f"scenario did not land:\n{sink.log.read_text()[-2000:]}\n{worker.log.read_text()[-2000:]}"
        )
        worker.stop()
        yield AnalyticsData(settings, facts, sink)
    finally:
        worker.stop()
        sink.stop()
