"""Operating it: /metrics behind the metrics token, /readyz, consumer lag and `agentstream status`."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from typer.testing import CliRunner

from agentstream.cli.app import app
from agentstream.process.metrics import OpsStatus, metrics_token_file, scrape
from agentstream.process.secrets import read_secret
from agentstream.producers.client import AgentStream
from agentstream.settings import Settings
from agentstream.sinks.clickhouse import ClickHouseSink
from agentstream.sinks.metrics import sink_topics, start_sink_ops
from agentstream.topics.lag import consumer_lag
from tests.helpers import SinkProcess, WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def _emit(settings: Settings, rollouts: int) -> None:
    """``rollouts`` rollouts of one span and one reward each."""
    with AgentStream(settings) as sdk:
        for i in range(rollouts):
            with sdk.rollout({"i": i}):
                with sdk.span("step", kind="tool"):
                    pass
                sdk.emit_reward(1.0)
        assert sdk.flush(20)


def test_lag_shows_per_partition_before_any_consumer_ran(settings: Settings) -> None:
    _emit(settings, 40)
    group = settings.sink.group_id
    lags = consumer_lag(settings, {group: sink_topics(settings)})
    spans = [lag for lag in lags if lag.topic == settings.topic("spans")]
    assert sorted(lag.partition for lag in spans) == list(range(settings.partitions))
    assert all(lag.committed is None for lag in spans)
    assert sum(lag.lag for lag in spans) == 80  # each rollout's own span and its step
    assert sum(1 for lag in spans if lag.lag) > 1  # keyed by rollout: spread over the partitions

    env = {
        "AGENTSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "AGENTSTREAM_PARTITIONS": str(settings.partitions),
    }
    args = ["--data-dir", str(settings.data_dir), "--bootstrap-servers", str(settings.bootstrap_servers)]
    result = CliRunner().invoke(app, [*args, "status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["lag"]["groups"][group] >= 120  # 80 spans, 40 rewards (and rollout events)
    by_partition = {
        p["partition"]: p["lag"] for p in report["lag"]["partitions"] if p["topic"] == settings.topic("spans")
    }
    assert by_partition == {lag.partition: lag.lag for lag in spans}

    table = CliRunner().invoke(app, [*args, "status", "--partitions"], env=env)
    assert table.exit_code == 0, table.output
    assert "lag per partition" in table.output and group in table.output


def test_sink_metrics_need_the_token_and_report_rows_lag_and_freshness(settings: Settings) -> None:
    sink = SinkProcess(settings).start()
    try:
        _emit(settings, 30)
        [ops] = [s for s in OpsStatus.live(settings.data_dir) if s.component == "sink"]
        assert ops.pid == sink.process.pid
        url = f"{ops.url}/metrics"
        assert scrape(url, None)[0] == 401
        assert scrape(url, "not-the-token")[0] == 401
        token = read_secret(metrics_token_file(settings.metrics, settings.data_dir))

        def landed() -> str | None:
            status, body = scrape(url, token)
            assert status == 200
            done = 'agentstream_sink_rows_total{table="spans"} 60.0' in body
            return body if done and 'agentstream_sink_freshness_seconds{table="spans"}' in body else None

        body = wait_for(landed, 60)
        assert body, scrape(url, token)[1]
        assert "agentstream_sink_records_total" in body
        group = settings.sink.group_id
        assert (
            f'agentstream_consumer_lag_records{{group="{group}",partition="0",topic="{settings.topic("spans")}"}}'
            in body
        )
        assert scrape(f"{ops.url}/healthz", None) == (200, "ok\n")
        assert scrape(f"{ops.url}/readyz", None) == (200, "ready\n")
    finally:
        sink.stop()
    assert OpsStatus.live(settings.data_dir) == []


def test_readyz_is_503_until_the_sink_consumes(settings: Settings, clickhouse: Any, chdb_path: Path) -> None:
    def connect() -> Any:
        return clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=clickhouse.database)

    sink = ClickHouseSink(settings, connect(), connect=connect)
    ops = start_sink_ops(settings, sink.stats)
    assert ops is not None
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), name="test-sink")
    try:
        status, reason = scrape(f"{ops.url}/readyz", None)
        assert status == 503 and "no partitions" in reason
        sink.prepare()
        thread.start()
        assert wait_for(lambda: scrape(f"{ops.url}/readyz", None)[0] == 200, 30)
        assert scrape(f"{ops.url}/healthz", None) == (200, "ok\n")
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(60)
        ops.stop()


def test_stream_worker_serves_ready_and_its_metrics(settings: Settings) -> None:
    worker = WorkerProcess(settings).start().wait_ready()
    try:
        _emit(settings, 5)
        [ops] = [s for s in OpsStatus.live(settings.data_dir) if s.component == "worker"]
        assert scrape(f"{ops.url}/readyz", None) == (200, "ready\n")
        assert scrape(f"{ops.url}/metrics", None)[0] == 401
        token = read_secret(metrics_token_file(settings.metrics, settings.data_dir))

        def counted() -> str | None:
            body = scrape(f"{ops.url}/metrics", token)[1]
            # 10 spans, 5 rewards and 10 rollout events (started, ended)
            return body if "agentstream_worker_events_total 25.0" in body else None

        body = wait_for(counted, 60)
        assert body, scrape(f"{ops.url}/metrics", token)[1]
        assert f'agentstream_consumer_lag_records{{group="{settings.streams.app_id}"' in body
    finally:
        worker.stop()


def test_the_sdk_serves_its_delivery_metrics_only_when_asked(settings: Settings) -> None:
    with AgentStream(settings) as quiet:
        assert [s.component for s in OpsStatus.live(settings.data_dir)] == []
        assert quiet.flush(5)
    opted_in = settings.model_copy(update={"sdk": settings.sdk.model_copy(update={"metrics_port": 0})})
    with AgentStream(opted_in) as sdk:
        for i in range(3):
            sdk.emit_reward(1.0, rollout_id=f"r{i}")
        assert sdk.flush(20)
        [ops] = OpsStatus.live(settings.data_dir)
        assert ops.component == "sdk"
        assert scrape(f"{ops.url}/metrics", None)[0] == 401
        token = read_secret(metrics_token_file(settings.metrics, settings.data_dir))
        status, body = scrape(f"{ops.url}/metrics", token)
        assert status == 200
        assert 'agentstream_sdk_records_submitted_total{service="agent"} 3.0' in body
        sent = re.search(r'agentstream_sdk_records_sent_total\{service="agent"\} (\S+)', body)
        assert sent and float(sent.group(1)) >= 3  # and the writer schemas it published
        assert 'agentstream_sdk_spool_bytes{service="agent"}' in body
    assert OpsStatus.live(settings.data_dir) == []
