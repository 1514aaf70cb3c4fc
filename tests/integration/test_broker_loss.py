"""State is right after the broker is SIGKILLed and comes back.

Rollouts run across a broker restart. The embedded Tansu keeps its log in memory only: the
pre-outage calls, states and metric partials are gone from Kafka (and from the stream workers'
tables) but were landed in ClickHouse. An Apache Kafka node keeps its storage: the workers resume
from their changelogs and committed offsets. Either way the rollouts read as ended afterwards,
rewards for pre-outage calls become triplets, and the window's metrics count every rollout once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest

from agentstream.clickhouse.connect import connect
from agentstream.deploy.stack import Stack
from agentstream.producers.client import AgentStream
from agentstream.settings import Settings
from tests.helpers import kill_broker, own_broker, restart_broker, wait_for

pytestmark = pytest.mark.integration

BEFORE = 6  # rollouts that end before the outage
ACROSS = 6  # rollouts that start before it and end after it


def _call(client: AgentStream) -> str:
    with client.span("chat", kind="llm") as span:
        span.set_attributes({"gen_ai.input.messages": '[{"role": "user", "content": "hi"}]'})
        span.set_attribute("gen_ai.output.messages", '[{"role": "assistant", "content": "hello"}]')
        span.set_token_ids(range(4), range(2))
        return span.span_id


def _settings(tmp_path: Path, bootstrap_servers: str | None = None) -> Settings:
    return Settings(
        bootstrap_servers=bootstrap_servers,
        data_dir=tmp_path / "data",
        topic_prefix="loss.",
        partitions=2,
        sink={"batch_max_seconds": 0.1, "session_timeout_ms": 2000},
        # no replay window: nothing of the pre-outage log comes back from the SDK, so what the
        # workers know afterwards comes from ClickHouse or not at all
        sdk={"delivery_timeout_ms": 3000, "replay_window_seconds": 0},
        # one window spans the whole test, so pre- and post-outage rollouts share its partials
        streams={
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 400,
            "metrics_window_seconds": 3600,
            "metrics_flush_seconds": 0.2,
        },
        promotion={"interval_seconds": 3600},
    )


# Tansu keeps its log in memory only: a SIGKILL loses it (an Apache node keeps its storage)
@pytest.mark.tansu_only
def test_rollouts_rewards_and_metrics_survive_a_broker_that_lost_its_log(tmp_path: Path) -> None:
    def outage(stack: Stack) -> None:
        # the stack's embedded broker: the stack restarts it, on the same address, with an empty log
        os.kill(stack.broker.pid, signal.SIGKILL)  # type: ignore[union-attr]
        assert wait_for(lambda: stack.broker_status.restarts == 1, timeout=60)

    _rollouts_across_an_outage(_settings(tmp_path), outage)


@pytest.mark.apache_only
def test_rollouts_rewards_and_metrics_survive_an_apache_broker_restart(tmp_path: Path) -> None:
    with own_broker("apache", tmp_path / "broker") as broker:

        def outage(stack: Stack) -> None:
            kill_broker(broker)  # SIGKILL: storage kept, as after a machine crash
            restart_broker(broker)

        _rollouts_across_an_outage(_settings(tmp_path, broker.bootstrap_servers), outage)


def _rollouts_across_an_outage(settings: Settings, outage: Callable[[Stack], None]) -> None:
    with Stack(settings, workers=1, promoter=False, dashboard=False) as stack:
        stack.wait_ready()
        resolved = stack.resolved_settings()
        client = AgentStream(resolved)
        ch = connect(resolved)
        try:
            for i in range(BEFORE):
                with client.rollout({"before": i}) as rollout:
                    _call(client)
                    rollout.emit_reward(1.0)
            open_rollouts = ExitStack()
            across = []
            for i in range(ACROSS):
                rollout = open_rollouts.enter_context(client.rollout({"across": i}))
                span_id = _call(client)
                for _ in range(
                    3
                ):  # the pre-outage state gets a higher version count than the post-outage one
                    client.emit_rollout_event(
                        rollout.rollout_id, "heartbeat", attempt_id=rollout.attempt_id, attempt_number=1
                    )
                across.append((rollout, span_id))
            assert client.flush(30)
            # everything before the outage is in ClickHouse, metrics partials included
            landed = (
                "SELECT (SELECT count() FROM spans WHERE kind = 'llm'),"
                " (SELECT sum(rollouts) FROM version_metrics_by_window),"
                " (SELECT countIf(status = 'running') FROM rollouts)"
            )
            assert wait_for(
                lambda: tuple(ch.query(landed).result_rows[0]) == (BEFORE + ACROSS, BEFORE, ACROSS),
                timeout=90,
            ), ch.query(landed).result_rows

            outage(stack)
            assert wait_for(lambda: all(c.status.state == "running" for c in stack.children), timeout=60)

            # after the outage: each rollout's calls get a reward, and the rollouts end
            for rollout, span_id in across:
                client.emit_reward(0.5, rollout_id=rollout.rollout_id, span_id=span_id)
            open_rollouts.close()  # attempt_finished of each, newest first
            assert client.flush(60), client.stats
        finally:
            client.close()

        ids = [rollout.rollout_id for rollout, _ in across]
        states = (
            "SELECT status, count() FROM rollouts WHERE rollout_id IN {ids:Array(String)} GROUP BY status"
        )
        assert wait_for(
            lambda: dict(ch.query(states, parameters={"ids": ids}).result_rows) == {"succeeded": ACROSS},
            timeout=90,
        ), ch.query(states, parameters={"ids": ids}).result_rows

        triplets = (
            "SELECT count() FROM triplets FINAL WHERE rollout_id IN {ids:Array(String)} AND reward = 0.5"
        )
        assert wait_for(
            lambda: ch.query(triplets, parameters={"ids": ids}).result_rows[0][0] == ACROSS, timeout=90
        ), ch.query(  # every version: a post-outage one must outrank what was stored before
            "SELECT rollout_id, version, reward, mode FROM triplets WHERE rollout_id IN {ids:Array(String)}"
            " ORDER BY rollout_id, emitted_at",
            parameters={"ids": ids},
        ).result_rows

        metrics = "SELECT sum(rollouts), sum(succeeded), sum(rewards) FROM version_metrics_by_window"
        expected = (BEFORE + ACROSS, BEFORE + ACROSS, BEFORE + ACROSS)
        assert wait_for(lambda: tuple(ch.query(metrics).result_rows[0]) == expected, timeout=90), (
            ch.query(metrics).result_rows,
            ch.query("SELECT * FROM version_metrics FINAL").result_rows,
        )
