"""Stream workers against the real broker: lifecycle statuses, the triplet joiner, kill recovery."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentstream.producers.client import AgentStream
from agentstream.producers.tracer import Rollout
from agentstream.settings import Settings
from tests.helpers import (
    SinkProcess,
    WorkerProcess,
    emit_finished_rollout,
    latest_by,
    llm_call,
    read_topic,
    wait_for,
)


@pytest.fixture
def stream_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "streams": settings.streams.model_copy(
                update={
                    "session_timeout_ms": 2_000,
                    "heartbeat_interval_ms": 400,
                    "timer_interval_seconds": 0.1,
                    "metrics_flush_seconds": 0.3,
                    "commit_interval_seconds": 0.5,
                }
            )
        }
    )


@pytest.fixture
def worker(stream_settings: Settings) -> Iterator[WorkerProcess]:
    process = WorkerProcess(stream_settings).start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture
def client(stream_settings: Settings) -> Iterator[AgentStream]:
    with AgentStream(stream_settings) as running:
        yield running


def states(settings: Settings, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    return latest_by(
        read_topic(settings, settings.topic("rollout-state"), timeout=timeout), "rollout_id", "version"
    )


def wait_states(settings: Settings, predicate: Any, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        current = states(settings, timeout=2.0)
        if predicate(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.3)


def test_lifecycle_retries_timeouts_unresponsive_and_cancel(
    stream_settings: Settings, worker: WorkerProcess, client: AgentStream
) -> None:
    [retried] = client.enqueue({"rollout_id": "r-retry", "q": 1}, config={"max_attempts": 2})
    [timed_out] = client.enqueue(
        {"rollout_id": "r-timeout"}, config={"timeout_seconds": 1.0, "max_attempts": 1}
    )
    [unresponsive] = client.enqueue(
        {"rollout_id": "r-unresponsive"}, config={"unresponsive_seconds": 1.0, "max_attempts": 2}
    )
    [not_retried] = client.enqueue(
        {"rollout_id": "r-no-retry"},
        config={"timeout_seconds": 0.5, "max_attempts": 3, "retry_condition": ["failed"]},
    )
    [cancelled] = client.enqueue({"rollout_id": "r-cancel"})
    client.flush()

    def event(rollout_id: str, kind: str, attempt: int, **kwargs: Any) -> None:
        client.emit_rollout_event(
            rollout_id, kind, attempt_id=f"{rollout_id}#{attempt}", attempt_number=attempt, **kwargs
        )

    event(retried, "attempt_finished", 1, status="failed", error="boom")
    event(timed_out, "attempt_started", 1)
    event(unresponsive, "attempt_started", 1)
    event(not_retried, "attempt_started", 1)
    event(cancelled, "cancel_requested", 0)
    client.flush()
    # the retry and the unresponsive attempt are requeued as attempt 2: finish them on "another runner"
    tasks = wait_for(
        lambda: (
            [
                t
                for t in read_topic(stream_settings, stream_settings.topic("tasks"), timeout=2)
                if t["attempt_number"] == 2
            ]
            if len(
                [
                    t
                    for t in read_topic(stream_settings, stream_settings.topic("tasks"), timeout=2)
                    if t["attempt_number"] == 2
                ]
            )
            >= 2
            else None
        ),
        timeout=30,
    )
    assert sorted(t["rollout_id"] for t in tasks) == [retried, unresponsive]
    event(retried, "attempt_finished", 2, status="succeeded", worker_id="runner-b")
    event(unresponsive, "attempt_started", 2, worker_id="runner-b")
    event(unresponsive, "attempt_finished", 2, status="succeeded", worker_id="runner-b")
    event(retried, "attempt_finished", 1, status="succeeded")  # a stale, redelivered outcome: ignored
    client.flush()

    final = wait_states(
        stream_settings,
        lambda s: all(
            s.get(r, {}).get("status") in ("succeeded", "failed", "cancelled")
            for r in (retried, timed_out, unresponsive, not_retried, cancelled)
        ),
    )
    assert final[retried]["status"] == "succeeded"
    assert [a["status"] for a in final[retried]["attempts"]] == ["failed", "succeeded"]
    assert final[retried]["attempts"][1]["worker_id"] == "runner-b"
    assert final[timed_out]["status"] == "failed"
    assert [a["status"] for a in final[timed_out]["attempts"]] == ["timeout"]
    assert final[unresponsive]["status"] == "succeeded"
    assert [a["status"] for a in final[unresponsive]["attempts"]] == ["unresponsive", "succeeded"]
    assert final[not_retried]["status"] == "failed"
    assert [a["status"] for a in final[not_retried]["attempts"]] == ["timeout"]
    assert final[cancelled]["status"] == "cancelled"


@pytest.fixture
def tiny_cache_worker(stream_settings: Settings) -> Iterator[WorkerProcess]:
    # a one-call cache: most triplets re-read their call's span from Kafka (the restart path)
    settings = stream_settings.model_copy(
        update={"streams": stream_settings.streams.model_copy(update={"call_cache_size": 1})}
    )
    process = WorkerProcess(settings).start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def test_joiner_out_of_order_duplicates_and_late_rewards(
    stream_settings: Settings, tiny_cache_worker: WorkerProcess, client: AgentStream
) -> None:
    rollout = Rollout(client, rollout_id="r-join", attempt_id="r-join#1")
    # the reward arrives (twice: a duplicate delivery) before the calls it rewards; its timestamp is
    # after both calls end. Far enough ahead that a slow flush on a busy machine cannot make the
    # second call end after it (with +2 s it did, and the reward went to the first call).
    reward_time = int(time.time() * 1e6) + 8_000_000
    for _ in range(2):
        client._worker.submit(
            (
                "reward",
                {
                    "reward_id": "rw-final",
                    "rollout_id": "r-join",
                    "attempt_id": "r-join#1",
                    "span_id": None,
                    "response_id": None,
                    "trace_id": None,
                    "parent_span_id": None,
                    "sequence_id": 0,
                    "name": "rule",
                    "value": 1.0,
                    "feedback": "valid arguments",
                    "source": "rule",
                    "timestamp": reward_time,
                    "attributes": {},
                },
            )
        )
    client.flush()
    time.sleep(1.0)
    first = llm_call(client, rollout, "route: printer broken", "hardware")
    second = llm_call(client, rollout, "create ticket", '{"queue": "hardware"}')
    client.flush()

    def rewarded() -> Any:
        latest = latest_by(
            read_topic(stream_settings, stream_settings.topic("triplets"), timeout=2), "triplet_id", "version"
        )
        live = [t for t in latest.values() if t["reward"] is not None]
        return (latest, live) if live and live[0]["span_id"] == second else None

    result = wait_for(rewarded, timeout=30)
    assert result, "no triplet for the rewarded call"
    latest, live = result
    # first_occurrence: the reward goes to the latest call that ended before it; if the first call
    # was credited while the second was not yet seen, that triplet was retracted (reward None)
    assert [(t["span_id"], t["reward"], t["version"]) for t in live] == [(second, 1.0, 1)]
    assert all(t["reward"] is None for t in latest.values() if t["span_id"] == first)
    triplet = live[0]
    assert triplet["prompt_token_ids"] == [1, 2, 3] and triplet["response_token_ids"] == [4, 5]
    assert "create ticket" in triplet["prompt_messages"] and triplet["resource_version"] == "v1"
    assert triplet["feedback"] == "valid arguments" and triplet["credit_assignment"] == "first_occurrence"

    # a late business reward explicitly on the first call, one on the second (both stamped after the
    # first reward, whose feedback therefore comes first). Each reward name is a dimension of its own.
    time.sleep(max(0.0, reward_time / 1e6 - time.time()) + 0.1)
    client.emit_reward(0.5, rollout_id="r-join", span_id=first, source="business_event", name="resolved")
    client.emit_reward(
        -1.0, rollout_id="r-join", span_id=second, source="human", name="rating", feedback="rude"
    )
    client.flush()

    def late_joined() -> Any:
        latest = latest_by(
            read_topic(stream_settings, stream_settings.topic("triplets"), timeout=2), "triplet_id", "version"
        )
        by_span = {t["span_id"]: t for t in latest.values()}
        done = by_span.get(first, {}).get("reward_dimensions") == {"resolved": 0.5} and by_span.get(
            second, {}
        ).get("reward_dimensions") == {"rule": 1.0, "rating": -1.0}
        return latest if done else None

    latest = wait_for(late_joined, timeout=30)
    assert latest, "the late rewards were not joined"
    by_span = {t["span_id"]: t for t in latest.values()}
    # no dimension is named "reward", so the primary one (the scalar) is the first reward's: "rule";
    # the later dimensions are kept by name and never added onto it
    assert by_span[first]["reward"] is None and not by_span[first]["retracted"]
    assert by_span[second]["reward"] == 1.0 and by_span[second]["version"] >= 2  # never 1.0 + (-1.0)
    assert by_span[second]["feedback"] == "valid arguments\nrude"
    assert (tiny_cache_worker.status() or {}).get("span_rereads", 0) >= 1


def test_worker_sigkill_recovers_tables_without_loss_or_duplicates(stream_settings: Settings) -> None:
    """Two workers share the partitions while rollouts stream in; each is SIGKILLed and restarted.

    Every rollout must end succeeded with its reward counted exactly once (the table state survived
    and no source event was skipped), and the sink must hold exactly two triplets per rollout.
    """
    settings = stream_settings.model_copy(
        update={
            "streams": stream_settings.streams.model_copy(
                update={"default_credit_assignment": "final_broadcast"}
            )
        }
    )
    sink = SinkProcess(settings).start()
    workers = [WorkerProcess(settings, "worker-a").start(), WorkerProcess(settings, "worker-b").start()]
    for w in workers:
        w.wait_ready()
    n = 1_200
    stop = threading.Event()

    def produce() -> None:
        with AgentStream(settings) as client:
            for i in range(n):
                emit_finished_rollout(client, f"k{i:05d}", [(f"q{i}", "a"), (f"q{i} again", "b")])
                if i % 50 == 0:
                    time.sleep(0.25)  # ~200 rollouts/s: the kills land mid-stream
                if stop.is_set():
                    break
            client.flush(30)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        rng = random.Random(7)
        for index in (0, 1, 0):
            time.sleep(rng.uniform(1.0, 2.0))
            workers[index].kill()
            time.sleep(0.5)
            workers[index] = WorkerProcess(settings, f"worker-{index}-again").start()
        producer.join(120)
        for w in workers:
            w.wait_ready()

        final = wait_states(
            settings,
            lambda s: (
                len(s) == n and all(v["status"] == "succeeded" and v["reward_count"] >= 1 for v in s.values())
            ),
            timeout=90,
        )
        assert len(final) == n
        not_done = sorted(k for k, v in final.items() if v["status"] != "succeeded")
        assert not not_done, f"{len(not_done)} rollouts not succeeded, e.g. {not_done[:5]}"
        counts = {v["reward_count"] for v in final.values()}
        assert counts == {1}, f"reward counts {counts}: table state was lost or an event skipped"

        expected_triplets = 2 * n

        def sink_triplets() -> Any:
            rows = sink_query(
                settings,
                "SELECT count(), uniqExact(triplet_id), min(reward), max(version) FROM triplets FINAL",
            )
            return rows if rows and rows[0][0] >= expected_triplets else None

        rows = wait_for(sink_triplets, timeout=90, interval=1.0)
        if not rows:
            in_topic = latest_by(
                read_topic(settings, settings.topic("triplets"), timeout=10), "triplet_id", "version"
            )
            stored = {r[0] for r in sink_query(settings, "SELECT DISTINCT triplet_id FROM triplets")}
            missing_rollouts = sorted({t["rollout_id"] for k, t in in_topic.items() if k not in stored})
            per_rollout: dict[str, int] = {}
            for t in in_topic.values():
                per_rollout[t["rollout_id"]] = per_rollout.get(t["rollout_id"], 0) + 1
            short = sorted(r for r in final if per_rollout.get(r, 0) < 2)
            history = []
            if short:
                for m in read_topic(
                    settings,
                    f"{settings.topic(settings.streams.app_id)}-joins-changelog",
                    decode=False,
                    timeout=10,
                ):
                    if m.key() and short[0].encode() in m.key():
                        value = json.loads(m.value()) if m.value() else None
                        history.append(
                            (
                                m.partition(),
                                m.offset(),
                                value and len(value["join"]["calls"]),
                                value and len(value["join"]["rewards"]),
                                value and value["join"].get("emitted"),
                            )
                        )
                spans = [
                    (m.partition(), m.offset())
                    for m in read_topic(settings, settings.topic("spans"), decode=False, timeout=10)
                    if m.key() == short[0].encode()
                ]
                history.append(("spans at", spans))
            raise AssertionError(
                f"history of {short[:1]}: {history}\n"
                f"per-rollout triplets of short: {[per_rollout.get(r, 0) for r in short[:20]]}\n"
                f"ClickHouse {len(stored)} triplets, topic {len(in_topic)}; rollouts missing in ClickHouse "
                f"{missing_rollouts[:10]}; rollouts with < 2 triplets in the topic: {len(short)} {short[:10]}"
            )
        count, unique, min_reward, _ = rows[0]
        assert count == unique == expected_triplets
        assert min_reward == 1.0
        duplicates = sink_query(
            settings, "SELECT triplet_id, count() c FROM triplets FINAL GROUP BY triplet_id HAVING c > 1"
        )
        assert duplicates == []
    finally:
        stop.set()
        producer.join(30)
        for w in workers:
            w.stop()
        sink.stop()


def sink_query(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    from agentstream.clickhouse.connect import connect

    client = connect(settings)
    try:
        return [tuple(row) for row in client.query(sql).result_rows]
    finally:
        client.close()


def test_per_version_metrics_reach_the_metrics_topic_and_clickhouse(
    stream_settings: Settings, worker: WorkerProcess, client: AgentStream
) -> None:
    sink = SinkProcess(stream_settings).start()
    try:
        outcomes = {"v1": [True, True, False, True], "v2": [False, True]}
        for version, results in outcomes.items():
            for i, ok in enumerate(results):
                rollout_id = f"m-{version}-{i}"
                client.emit_rollout_event(
                    rollout_id,
                    "attempt_finished",
                    attempt_id=f"{rollout_id}#1",
                    attempt_number=1,
                    status="succeeded" if ok else "failed",
                    resources={"prompt": version},
                    llm_calls=2,
                    input_tokens=100,
                    output_tokens=10,
                )
                client.emit_reward(1.0 if ok else 0.0, rollout_id=rollout_id, attempt_id=f"{rollout_id}#1")
        client.flush()
        query = (
            "SELECT resource_version, sum(rollouts), sum(succeeded), sum(rewards), sum(input_tokens) "
            "FROM version_metrics_by_window WHERE resource_name = 'prompt' GROUP BY resource_version "
            "ORDER BY resource_version"
        )
        expected = [("v1", 4, 3, 4, 400), ("v2", 2, 1, 2, 200)]
        rows = wait_for(
            lambda: (r := sink_query(stream_settings, query)) == expected and r, timeout=40, interval=0.5
        )
        assert rows == expected, sink_query(stream_settings, query)
        records = read_topic(stream_settings, stream_settings.topic("metrics"), timeout=5)
        assert {r["resource_version"] for r in records} == {"v1", "v2"}
        # counted by the rollouts' mode (traffic: enqueued without one), which lands as a column
        assert {r["mode"] for r in records} == {"train"}
        assert sink_query(stream_settings, "SELECT DISTINCT mode FROM version_metrics") == [("train",)]
    finally:
        sink.stop()
