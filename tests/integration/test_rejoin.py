"""``agentstream rejoin`` against the real broker, stream worker and sink: after a credit-strategy
change, re-derived triplets are new versions of the same ids, ClickHouse keeps the newest, and a
second run emits nothing."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from agentstream.cli import app
from agentstream.producers.client import AgentStream
from agentstream.producers.tracer import Rollout
from agentstream.schemas import genai, now_us
from agentstream.settings import Settings
from agentstream.streams.rejoin import rejoin
from tests.helpers import SinkProcess, WorkerProcess, latest_by, read_topic, wait_for

ROLLOUTS = ("rj-a", "rj-b")


@pytest.fixture
def stream_settings(settings: Settings) -> Settings:
    streams = settings.streams.model_copy(
        update={
            "session_timeout_ms": 2_000,
            "heartbeat_interval_ms": 400,
            "timer_interval_seconds": 0.1,
            "commit_interval_seconds": 0.5,
        }
    )
    return settings.model_copy(update={"streams": streams})


@pytest.fixture
def sink(stream_settings: Settings) -> Iterator[SinkProcess]:
    process = SinkProcess(stream_settings).start()
    try:
        yield process
    finally:
        process.stop()


def llm_call(client: AgentStream, rollout: Rollout, prompt: str) -> str:
    with client.span("chat", kind="llm", rollout=rollout) as span:
        messages = [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
        span.set_attribute(genai.INPUT_MESSAGES, json.dumps(messages))
        span.set_attribute(genai.OUTPUT_MESSAGES, json.dumps([{"role": "assistant", "parts": []}]))
        span.set_attribute(genai.REQUEST_MODEL, "test-model")
        span.set_token_ids([1, 2, 3], [4, 5])
        return span.span_id


def latest_triplets(settings: Settings) -> dict[str, dict[str, Any]]:
    records = read_topic(settings, settings.topic("triplets"), timeout=2)
    return latest_by([r for r in records if r["rollout_id"] in ROLLOUTS], "triplet_id", "version")


def stored(settings: Settings) -> dict[str, tuple[Any, ...]]:
    from agentstream.clickhouse.connect import connect

    client = connect(settings)
    try:
        rows = client.query(
            "SELECT triplet_id, version, reward, credit_assignment FROM triplets FINAL "
            "WHERE rollout_id IN {ids:Array(String)}",
            parameters={"ids": list(ROLLOUTS)},
        ).result_rows
    finally:
        client.close()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_rejoin_emits_new_versions_after_a_strategy_change_and_is_idempotent(
    stream_settings: Settings, sink: SinkProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    since = now_us() - 1_000_000
    worker = WorkerProcess(stream_settings).start().wait_ready()  # first_occurrence, the default
    try:
        last_calls: set[str] = set()
        with AgentStream(stream_settings) as client:
            for rollout_id in ROLLOUTS:
                rollout = Rollout(client, rollout_id=rollout_id, attempt_id=f"{rollout_id}#1")
                llm_call(client, rollout, f"{rollout_id}: route")
                last_calls.add(llm_call(client, rollout, f"{rollout_id}: answer"))
                if rollout_id == "rj-a":
                    # its calls are joined before anything of the rollout's state is known (the
                    # reward makes it): their first triplets say no mode, and must be re-emitted
                    client.flush()
                    joined = wait_for(
                        lambda: (
                            sum(t["rollout_id"] == "rj-a" for t in latest_triplets(stream_settings).values())
                            == 2
                        ),
                        timeout=60,
                    )
                    assert joined, f"the worker joined no calls:\n{worker.log.read_text()[-3000:]}"
                else:
                    time.sleep(0.01)  # the reward is stamped after both calls ended
                client.emit_reward(1.0, rollout_id=rollout_id, attempt_id=f"{rollout_id}#1")
            client.flush()

        def live_done() -> dict[str, dict[str, Any]] | None:
            # done once the worker has joined every record: a reward can overtake its rollout's
            # last call (another topic), and then first goes to the call before
            latest = latest_triplets(stream_settings)
            credited = {t["span_id"] for t in latest.values() if t["reward"] is not None}
            return latest if len(latest) == 4 and credited == last_calls else None

        live = wait_for(live_done, timeout=60)
        assert live, f"the worker gave no triplets:\n{worker.log.read_text()[-3000:]}"
    finally:
        worker.stop()
    # first_occurrence: the reward went to each rollout's last call only
    assert sorted(t["reward"] for t in live.values() if t["reward"] is not None) == [1.0, 1.0]
    # and every triplet says the mode of the state the reward made, whichever came first
    assert {t["mode"] for t in live.values()} == {"train"}, live

    # nothing changed: the log re-derives exactly what the live joiner emitted
    unchanged = rejoin(stream_settings, since)
    assert (unchanged.rollouts, unchanged.emitted, unchanged.new_versions) == (2, 0, 0), unchanged
    assert unchanged.unchanged == len(live)

    # a new default strategy: every call of an attempt shares its final reward
    streams = stream_settings.streams.model_copy(update={"default_credit_assignment": "final_broadcast"})
    changed_settings = stream_settings.model_copy(update={"streams": streams})
    dry = rejoin(changed_settings, since, dry_run=True)
    assert dry.emitted == 0 and dry.new_versions == 4
    assert latest_triplets(stream_settings) == live

    report = rejoin(changed_settings, since)
    assert (report.emitted, report.new_versions, report.retracted) == (4, 4, 0), report
    after = latest_triplets(stream_settings)
    assert set(live) <= set(after) and len(after) == 4
    for triplet_id, triplet in after.items():
        before = live.get(triplet_id, {}).get("version", 0)
        assert triplet["version"] == before + 1, (triplet_id, before, triplet["version"])
        assert (triplet["reward"], triplet["credit_assignment"]) == (1.0, "final_broadcast")

    expected = {k: (t["version"], 1.0, "final_broadcast") for k, t in after.items()}
    landed = wait_for(lambda: stored(stream_settings) == expected, timeout=60)
    assert landed, (
        f"ClickHouse FINAL {stored(stream_settings)} != {expected}:\n{sink.log.read_text()[-2000:]}"
    )

    # the same again, through the command line: nothing to emit
    for name, value in changed_settings.to_env().items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["rejoin", "--since", "10m"])
    assert result.exit_code == 0, result.output
    assert re.search(r"rollouts re-derived\s*│\s*2\s*│", result.output), result.output
    assert re.search(r"emitted\s*│\s*0\s*│", result.output), result.output
    assert latest_triplets(stream_settings) == after
    again = rejoin(changed_settings, since, rollout_ids=["rj-a"])
    assert (again.rollouts, again.emitted, again.unchanged) == (1, 0, 2)

    # rollouts that began before --since, or after --until, are left alone
    late = rejoin(stream_settings, now_us())
    assert (late.rollouts, late.rollouts_started_before, late.emitted) == (0, 2, 0)
    early = rejoin(stream_settings, since, until_us=since + 1)
    assert (early.rollouts, early.emitted) == (0, 0)
