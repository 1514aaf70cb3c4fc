"""`agentstream up`: the supervised group restarts what dies, and data keeps flowing."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from agentstream.clickhouse.connect import connect
from agentstream.deploy.stack import Stack
from agentstream.process.status import StackState
from agentstream.producers.client import AgentStream
from agentstream.settings import Settings
from tests.helpers import wait_for

# `agentstream up` with no bootstrap_servers starts and supervises the embedded Tansu, whatever
# --broker says; on Apache Kafka the stack's members meet an external broker (test_dashboard.py and
# test_security_*.py run stacks on the session broker).
pytestmark = [pytest.mark.integration, pytest.mark.tansu_only]


def _emit(client: AgentStream, n: int) -> None:
    for i in range(n):
        with client.rollout({"i": i}):
            with client.span("step", kind="tool"):
                pass


def _lowered(pid: int, by: int) -> bool:
    """Whether the process runs ``by`` below our priority: its main thread does, and no thread was
    left at ours (chDB raises its own memory worker to -20 on purpose; that one is not ours to set).
    Nice values: field 19 of /proc/<pid>/task/<tid>/stat."""
    ours = os.nice(0)
    nice = {
        int(stat.parent.name): int(stat.read_text().rsplit(")", 1)[1].split()[16])
        for stat in Path(f"/proc/{pid}/task").glob("*/stat")
    }
    return nice[pid] == ours + by and ours not in nice.values()


def test_stack_restarts_its_members_and_loses_nothing(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        topic_prefix="stack.",
        partitions=2,
        sink={"batch_max_seconds": 0.1, "session_timeout_ms": 2000},
        streams={"session_timeout_ms": 2000, "heartbeat_interval_ms": 400},
        sdk={"delivery_timeout_ms": 3000},
    )
    with Stack(settings, workers=1, nice=5) as stack:
        stack.wait_ready()
        # the broker and the members run below the default priority, every thread of them (the
        # members that bind fixed ports, OTLP and the dashboard, may be restarting where those are taken)
        members = [c for c in stack.children if c.name in ("sink", "worker-1", "promoter")]
        assert len(members) == 3
        for pid in [stack.broker.pid, *(c.status.pid for c in members)]:  # type: ignore[union-attr]
            assert _lowered(pid, 5), pid  # type: ignore[arg-type]
        advertised = StackState.load(settings.data_dir)
        assert advertised is not None and advertised.bootstrap_servers == stack.bootstrap_servers
        resolved = Settings(data_dir=settings.data_dir, topic_prefix="stack.").resolved()
        assert resolved.bootstrap_servers == stack.bootstrap_servers  # agents find the running stack
        client = AgentStream(resolved)
        try:
            _emit(client, 50)
            assert client.flush(20)

            sink = stack.children[0]
            os.kill(sink.status.pid, signal.SIGKILL)  # type: ignore[arg-type]
            assert wait_for(lambda: sink.status.restarts == 1 and stack.sink_status(), timeout=60)
            assert _lowered(sink.status.pid, 5)  # type: ignore[arg-type]
            _emit(client, 50)

            address = stack.bootstrap_servers
            os.kill(stack.broker.pid, signal.SIGKILL)  # type: ignore[union-attr]
            assert wait_for(lambda: stack.broker_status.restarts == 1, timeout=60)
            assert _lowered(stack.broker.pid, 5)  # type: ignore[union-attr, arg-type]
            assert stack.bootstrap_servers == address  # same address: clients just reconnect
            topics = AdminClient({"bootstrap.servers": address}).list_topics(timeout=10).topics
            assert {"stack.spans", "stack.rewards", "stack.dead-letter"} <= set(topics)
            _emit(client, 50)
            assert client.flush(60), client.stats
        finally:
            client.close()
        ch = connect(resolved)
        count = "SELECT count(), uniqExact(span_id) FROM spans"
        assert wait_for(lambda: ch.query(count).result_rows[0][0] >= 300, timeout=60), stack.sink_status()
        assert tuple(ch.query(count).result_rows[0]) == (300, 300)
        # the stream workers followed every rollout, through the sink and broker restarts
        succeeded = "SELECT count() FROM rollout_states FINAL WHERE status = 'succeeded'"
        assert wait_for(lambda: ch.query(succeeded).result_rows[0][0] >= 150, timeout=90), (
            ch.query(succeeded).result_rows,
            [(c.name, c.status) for c in stack.children],
        )
        assert ch.query(succeeded).result_rows[0][0] == 150
    assert StackState.load(settings.data_dir) is None  # stopped: no longer advertised
