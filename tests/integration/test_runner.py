"""Runners and the task queue against the real embedded broker: enqueue, take, run, report, commit."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from typer.testing import CliRunner

import agentstream
from agentstream.producers.client import AgentStream
from agentstream.producers.runner import Runner
from agentstream.producers.tasks import TaskSpec
from agentstream.schemas import (
    AvroDeserializer,
    AvroSerializer,
    Reward,
    RolloutConfig,
    RolloutEvent,
    Task,
    attempt_id_for,
)
from agentstream.settings import Settings
from tests.helpers import read_topic, wait_for

pytestmark = pytest.mark.integration

LAZY = 0.3
BEAT = 0.15


@pytest.fixture
def rsettings(settings: Settings) -> Settings:
    """The test's settings with a runner group of its own and short timings."""
    runner = settings.runner.model_copy(
        update={
            "group_id": f"runners-{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": 2_000,
            "lazy_start_seconds": LAZY,
            "heartbeat_seconds": BEAT,
            "shutdown_grace_seconds": 5.0,
            "concurrency": 4,
        }
    )
    return settings.model_copy(update={"runner": runner})


@pytest.fixture
def client(rsettings: Settings) -> Iterator[AgentStream]:
    sdk = AgentStream(rsettings)
    yield sdk
    sdk.close()


def put_tasks(settings: Settings, tasks: list[Task]) -> None:
    """Write Task records as the lifecycle processor does (Avro, single-object encoding)."""
    serializer = AvroSerializer(Task.avro_schema())
    producer = Producer(settings.producer_config())
    for task in tasks:
        producer.produce(settings.topic("tasks"), serializer(task.to_avro()), task.rollout_id.encode())
    assert producer.flush(10) == 0


def make_task(input_: Any, n: int = 1, rollout_id: str | None = None, **fields: Any) -> Task:
    return Task(
        rollout_id=rollout_id or f"ro-{uuid.uuid4().hex[:12]}",
        attempt_number=n,
        input=json.dumps(input_),
        enqueued_at=time.time_ns() // 1_000,
        **fields,
    )


class TopicLog:
    """Every record of a topic, read from the beginning and kept in per-partition order."""

    def __init__(self, settings: Settings, suffix: str, model: Any) -> None:
        topic = settings.topic(suffix)
        self.consumer = Consumer(settings.consumer_config("test-log", **{"enable.partition.eof": False}))
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.model = model
        self.deserializer = AvroDeserializer()
        self.records: list[Any] = []

    def poll(self) -> list[Any]:
        for message in self.consumer.consume(1000, timeout=0.1):
            if not message.error():
                self.records.append(self.model.from_avro(self.deserializer(message.value())))
        return self.records

    def wait(self, predicate: Callable[[list[Any]], bool], timeout: float = 20.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not predicate(self.poll()):
            assert time.monotonic() < deadline, f"timed out; have {len(self.records)} records"
        return self.records

    def settle(self, seconds: float = 0.5) -> list[Any]:
        """Read what else arrives within ``seconds`` (to check that nothing more does)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll()
        return self.records

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def events(rsettings: Settings) -> Iterator[TopicLog]:
    log = TopicLog(rsettings, "rollout-events", RolloutEvent)
    yield log
    log.close()


def finished(records: list[RolloutEvent]) -> dict[str, list[RolloutEvent]]:
    out: dict[str, list[RolloutEvent]] = {}
    for e in records:
        if e.type == "attempt_finished":
            out.setdefault(e.rollout_id, []).append(e)
    return out


def of(records: list[RolloutEvent], rollout_id: str) -> list[str]:
    return [e.type.value for e in records if e.rollout_id == rollout_id]


# ---- running agents -----------------------------------------------------------------------------------
def test_sync_agent_outcomes_rewards_usage_and_lazy_start(
    rsettings: Settings, client: AgentStream, events: TopicLog
) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def agent(task: dict, rollout: agentstream.producers.Rollout) -> Any:
        nonlocal running, peak
        assert agentstream.current_rollout() is rollout
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(task.get("sleep", 0.05))
            if task["kind"] == "raise":
                raise ValueError("boom: bad task")
            if task["kind"] == "fail":
                rollout.fail("gave up politely")
                return None
            if task["kind"] == "llm":
                for _ in range(2):
                    with agentstream.span("chat", kind="llm") as span:
                        span.set_attribute("gen_ai.usage.input_tokens", 11)
                        span.set_attribute("gen_ai.usage.output_tokens", 5)
                with agentstream.span("not-an-llm", kind="tool") as span:
                    span.set_attribute("gen_ai.usage.input_tokens", 1000)
                return "a string: no reward"
            return task.get("value")
        finally:
            with lock:
                running -= 1

    tasks = {
        "reward": make_task({"kind": "ok", "value": 0.7}, resources={"prompt": "3", "model": "m1"}),
        "raise": make_task({"kind": "raise"}, n=2),
        "fail": make_task({"kind": "fail"}),
        "llm": make_task({"kind": "llm"}),
        "slow": make_task({"kind": "ok", "sleep": 1.0, "value": 1}, resources={"prompt": "4"}),
        "bool": make_task({"kind": "ok", "value": True}),
    }
    tasks.update({f"par{i}": make_task({"kind": "ok", "sleep": 0.4}) for i in range(4)})
    put_tasks(rsettings, list(tasks.values()))
    rewards = TopicLog(rsettings, "rewards", Reward)
    runner = Runner(agent, rsettings, client=client, worker_id="w-sync")
    assert not runner.is_async
    with runner:
        records = events.wait(lambda r: len(finished(r)) == len(tasks))
        assert client.flush(10)
    records = events.settle()
    done = finished(records)
    assert set(done) == {t.rollout_id for t in tasks.values()}
    for name, task in tasks.items():
        (event,) = done[task.rollout_id]  # exactly one outcome per task
        assert event.attempt_id == attempt_id_for(task.rollout_id, task.attempt_number)
        assert event.attempt_number == task.attempt_number
        assert event.worker_id == "w-sync"
        assert event.resources == task.resources
        assert event.started_at is not None and 0 < event.started_at <= event.timestamp
        expected = "failed" if name in ("raise", "fail") else "succeeded"
        assert event.status == expected, name
    assert "ValueError: boom: bad task" in (done[tasks["raise"].rollout_id][0].error or "")
    assert done[tasks["fail"].rollout_id][0].error == "gave up politely"
    assert done[tasks["reward"].rollout_id][0].error is None

    llm = done[tasks["llm"].rollout_id][0]
    assert (llm.llm_calls, llm.input_tokens, llm.output_tokens) == (2, 22, 10)
    assert done[tasks["reward"].rollout_id][0].llm_calls == 0

    # lazy start: short attempts are reported by attempt_finished alone
    for name in ("reward", "raise", "fail", "bool"):
        assert of(records, tasks[name].rollout_id) == ["attempt_finished"], name
    slow = of(records, tasks["slow"].rollout_id)
    assert slow[0] == "attempt_started" and slow[-1] == "attempt_finished"
    assert slow.count("attempt_started") == 1 and slow.count("heartbeat") >= 2, slow
    started = next(
        e for e in records if e.rollout_id == tasks["slow"].rollout_id and e.type == "attempt_started"
    )
    assert started.status == "running" and started.worker_id == "w-sync"
    assert started.attempt_id == attempt_id_for(tasks["slow"].rollout_id, 1)
    assert peak >= 2, "attempts ran concurrently"

    # returned numbers are rewards (bools and strings are not)
    rewards.wait(lambda r: len(r) >= 2)
    by_rollout = {r.rollout_id: r for r in rewards.settle()}
    rewards.close()
    assert set(by_rollout) == {tasks["reward"].rollout_id, tasks["slow"].rollout_id}
    reward = by_rollout[tasks["reward"].rollout_id]
    assert (reward.name, reward.value, reward.source) == ("return", 0.7, "rule")
    assert reward.attempt_id == attempt_id_for(tasks["reward"].rollout_id, 1)
    assert by_rollout[tasks["slow"].rollout_id].value == 1.0
    assert runner.stats.succeeded == len(tasks) - 2 and runner.stats.failed == 2


def test_async_agent_runs_concurrently_on_one_loop(
    rsettings: Settings, client: AgentStream, events: TopicLog
) -> None:
    loops: set[int] = set()

    async def agent(task: dict) -> float:
        rollout = agentstream.current_rollout()
        assert rollout is not None and rollout.rollout_id == task["id"]
        loops.add(id(asyncio.get_running_loop()))
        async with agentstream.span("work", kind="tool"):
            await asyncio.sleep(0.8)
        if task.get("raise"):
            raise RuntimeError("async failure")
        return 0.25

    tasks = [make_task({"id": rid}, rollout_id=rid) for rid in (f"ro-a{i}" for i in range(4))]
    tasks.append(make_task({"id": "ro-bad", "raise": True}, rollout_id="ro-bad"))
    put_tasks(rsettings, tasks)
    runner = Runner(agent, rsettings, client=client, concurrency=5)
    assert runner.is_async
    with runner:
        records = events.wait(lambda r: len(finished(r)) == len(tasks))
    done = finished(events.settle())
    assert {rid: [e.status for e in evs] for rid, evs in done.items()} == {
        **{f"ro-a{i}": ["succeeded"] for i in range(4)},
        "ro-bad": ["failed"],
    }
    assert "RuntimeError: async failure" in (done["ro-bad"][0].error or "")
    assert len(loops) == 1
    # all five ran at once: their started_at lie within one attempt's duration
    starts = sorted(evs[0].started_at for evs in done.values())
    assert starts[-1] - starts[0] < 700_000
    # 0.8 s > lazy start: each got attempt_started and a heartbeat before finishing
    for rid in done:
        kinds = of(records, rid)
        assert kinds[0] == "attempt_started" and "heartbeat" in kinds and kinds[-1] == "attempt_finished"


def test_two_runners_share_a_group(rsettings: Settings, client: AgentStream, events: TopicLog) -> None:
    def agent(task: dict) -> None:
        time.sleep(0.05)

    tasks = [make_task({"i": i}) for i in range(40)]
    put_tasks(rsettings, tasks)
    with (
        Runner(agent, rsettings, client=client, concurrency=2, worker_id="w1") as one,
        Runner(agent, rsettings, client=client, concurrency=2, worker_id="w2") as two,
    ):
        records = events.wait(lambda r: len(finished(r)) == len(tasks), timeout=30)
    done = finished(records)
    for task in tasks:
        # at least once: a rebalance may hand a running task to the other runner as well
        outcomes = done[task.rollout_id]
        assert {(e.attempt_id, e.status) for e in outcomes} == {
            (attempt_id_for(task.rollout_id, 1), "succeeded")
        }
    assert one.stats.done + two.stats.done >= len(tasks)
    assert {e.worker_id for evs in done.values() for e in evs} <= {"w1", "w2"}


# ---- offsets and shutdown --------------------------------------------------------------------------------
def test_finished_tasks_are_committed_and_not_rerun(
    rsettings: Settings, client: AgentStream, events: TopicLog
) -> None:
    calls: list[str] = []

    def agent(task: dict) -> None:
        calls.append(task["id"])

    first = [make_task({"id": f"first-{i}"}) for i in range(6)]
    put_tasks(rsettings, first)
    with Runner(agent, rsettings, client=client):
        events.wait(lambda r: len(finished(r)) == len(first))
    assert sorted(calls) == sorted(f"first-{i}" for i in range(6))

    calls.clear()
    late = make_task({"id": "late"})
    put_tasks(rsettings, [late])
    with Runner(agent, rsettings, client=client) as second:
        events.wait(lambda r: late.rollout_id in finished(r))
        assert wait_for(lambda: second.stats.received >= 1, 5)
        time.sleep(0.5)  # time to (wrongly) take anything else
    assert calls == ["late"], "a new runner of the group resumes after the committed tasks"
    assert all(len(evs) == 1 for evs in finished(events.settle()).values())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_graceful_stop_releases_unfinished_attempts(
    rsettings: Settings, client: AgentStream, events: TopicLog, kind: str
) -> None:
    release = threading.Event()
    calls: list[str] = []
    rsettings = rsettings.model_copy(
        update={"runner": rsettings.runner.model_copy(update={"shutdown_grace_seconds": 0.5})}
    )

    if kind == "sync":

        def agent(task: dict) -> float:
            calls.append(task["id"])
            if task["id"] == "stuck":
                release.wait(30)
            else:
                time.sleep(0.1)
            return 1.0

    else:

        async def agent(task: dict) -> float:  # type: ignore[misc]
            calls.append(task["id"])
            await asyncio.sleep(30 if task["id"] == "stuck" else 0.1)
            return 1.0

    stuck = make_task({"id": "stuck"}, resources={"prompt": "7"})
    quick = make_task({"id": "quick"})
    put_tasks(rsettings, [stuck, quick])
    rewards = TopicLog(rsettings, "rewards", Reward)
    runner = Runner(agent, rsettings, client=client, worker_id="w-stop")
    runner.start()
    events.wait(lambda r: quick.rollout_id in finished(r) and "attempt_started" in of(r, stuck.rollout_id))
    t0 = time.monotonic()
    assert runner.stop(timeout=20)
    assert time.monotonic() - t0 < 10
    assert runner.stats.released == 1 and runner.stats.succeeded == 1
    release.set()  # the abandoned agent finishes now: its outcome must not be reported
    time.sleep(0.3)
    assert client.flush(10)
    records = events.settle(0.5)
    kinds = of(records, stuck.rollout_id)
    assert "attempt_released" in kinds and "attempt_finished" not in kinds
    released = next(e for e in records if e.type == "attempt_released")
    assert released.attempt_id == attempt_id_for(stuck.rollout_id, 1) and released.worker_id == "w-stop"
    assert released.resources == {"prompt": "7"} and released.started_at is not None
    assert {r.rollout_id for r in rewards.settle()} == {quick.rollout_id}
    rewards.close()

    # released attempts are committed: the lifecycle processor requeues them, not the group
    calls.clear()
    probe = make_task({"id": "probe"})
    put_tasks(rsettings, [probe])
    with Runner(agent, rsettings, client=client):
        events.wait(lambda r: probe.rollout_id in finished(r))
        time.sleep(0.3)
    assert calls == ["probe"]


def test_invalid_task_input_fails_the_attempt(
    rsettings: Settings, client: AgentStream, events: TopicLog
) -> None:
    bad = Task(
        rollout_id="ro-notjson", attempt_number=1, input="{not json", enqueued_at=time.time_ns() // 1000
    )
    put_tasks(rsettings, [bad])
    with Runner(lambda task: 1.0, rsettings, client=client):
        records = events.wait(lambda r: "ro-notjson" in finished(r))
    (event,) = finished(records)["ro-notjson"]
    assert event.status == "failed" and "JSONDecodeError" in (event.error or "")


# ---- enqueue ------------------------------------------------------------------------------------------------
def test_enqueue_writes_task_enqueued_events(rsettings: Settings, client: AgentStream) -> None:
    ids = client.enqueue(
        [
            {"q": 1, "rollout_id": "ro-mine"},
            {"q": 2},
            TaskSpec({"q": 3}, task_type="other", config={"max_attempts": 5}),
        ],
        task_type="math",
        mode="val",
        config=RolloutConfig(max_attempts=3, timeout_seconds=60),
        resources={"prompt": 4},
        metadata={"dataset": "gsm8k"},
    )
    assert ids[0] == "ro-mine" and all(i.startswith("ro-") for i in ids) and len(set(ids)) == 3
    with pytest.raises(ValueError, match="task 1"):
        client.enqueue([{"q": 4}, {"q": object()}])  # nothing of a bad batch is written
    assert client.flush(10)
    records = [
        RolloutEvent.from_avro(r)
        for r in read_topic(rsettings, rsettings.topic("rollout-events"), expected=3)
    ]
    assert len(records) == 3 and all(e.type == "task_enqueued" for e in records)
    by_id = {e.rollout_id: e for e in records}
    assert set(by_id) == set(ids)
    first = by_id["ro-mine"]
    assert json.loads(first.task or "") == {"q": 1, "rollout_id": "ro-mine"}
    assert (first.task_type, first.mode, first.resources, first.metadata) == (
        "math",
        "val",
        {"prompt": "4"},
        {"dataset": "gsm8k"},
    )
    assert first.config == RolloutConfig(max_attempts=3, timeout_seconds=60)
    third = by_id[ids[2]]
    # a TaskSpec's config fields override those of the call
    assert third.task_type == "other" and third.config == RolloutConfig(max_attempts=5, timeout_seconds=60)


def test_top_level_enqueue_uses_the_default_client(rsettings: Settings) -> None:
    agentstream.init(rsettings)
    try:
        (rollout_id,) = agentstream.enqueue("just a string")
        assert agentstream.flush(10)
    finally:
        agentstream.shutdown()
    (event,) = [
        RolloutEvent.from_avro(r)
        for r in read_topic(rsettings, rsettings.topic("rollout-events"), expected=1)
    ]
    assert event.rollout_id == rollout_id and event.task == '"just a string"' and event.mode == "train"


def _cli(rsettings: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    from agentstream.cli import app

    for key, value in rsettings.to_env().items():
        monkeypatch.setenv(key, value)
    return CliRunner().invoke(app, list(args))


def test_cli_enqueue(rsettings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    file = tmp_path / "tasks.jsonl"
    file.write_text(
        "\n".join(
            [
                json.dumps({"input": {"q": "2+2"}, "rollout_id": "ro-cli-1", "config": {"max_attempts": 4}}),
                json.dumps({"question": "3*3", "input": "kept whole: not the wrapper form"}),
                "",
                json.dumps([1, 2, 3]),
                json.dumps({"input": "x", "task_type": "special", "resources": {"prompt": 2}}),
            ]
        )
        + "\n"
    )
    result = _cli(
        rsettings,
        monkeypatch,
        "tasks",
        "enqueue",
        str(file),
        "--task-type",
        "math",
        "--max-attempts",
        "2",
        "--timeout",
        "30",
        "--retry-on",
        "failed,timeout",
        "--credit-assignment",
        "discounted",
    )
    assert result.exit_code == 0, result.output
    assert "Enqueued 4 task(s)" in result.output
    records = [
        RolloutEvent.from_avro(r)
        for r in read_topic(rsettings, rsettings.topic("rollout-events"), expected=4)
    ]
    assert len(records) == 4
    by_task = {e.task: e for e in records}
    first = by_task['{"q":"2+2"}']
    assert first.rollout_id == "ro-cli-1" and first.task_type == "math" and first.mode == "train"
    assert first.config is not None and first.config.max_attempts == 4  # the line overrides the option
    assert first.config.timeout_seconds == 30 and first.config.credit_assignment == "discounted"
    assert [s.value for s in first.config.retry_condition] == ["failed", "timeout"]
    assert json.loads(next(t for t in by_task if "question" in t)) == {
        "question": "3*3",
        "input": "kept whole: not the wrapper form",
    }
    assert "[1,2,3]" in by_task
    special = by_task['"x"']
    assert special.task_type == "special" and special.resources == {"prompt": "2"}
    assert special.config is not None and special.config.max_attempts == 2


def test_cli_enqueue_rejects_a_file_with_bad_lines(
    rsettings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    file = tmp_path / "bad.jsonl"
    file.write_text(
        '{"input": 1}\n{"input": 2, "config": {"max_attempts": 0}}\n{oops\n{"input": 3, "mode": "later"}\n'
    )
    result = _cli(rsettings, monkeypatch, "tasks", "enqueue", str(file))
    assert result.exit_code == 1
    output = result.output
    assert "line 2" in output and "max_attempts" in output
    assert "line 3" in output and "not JSON" in output
    assert "line 4" in output and "mode" in output
    assert "line 1:" not in output
    assert read_topic(rsettings, rsettings.topic("rollout-events"), timeout=2.0) == []


def test_cli_runner_runs_an_agent_module(rsettings: Settings, tmp_path: Path) -> None:
    """`agentstream runner MODULE:FUNCTION` in a child process: runs tasks, stops on SIGTERM."""
    import signal
    import subprocess
    import sys

    from tests.helpers import settings_env

    (tmp_path / "my_agent.py").write_text("def solve(task):\n    return 0.5 if task['ok'] else 1 / 0\n")
    tasks = [make_task({"ok": True}), make_task({"ok": False})]
    put_tasks(rsettings, tasks)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentstream.cli",
            "runner",
            "my_agent:solve",
            "--concurrency",
            "2",
            "--worker-id",
            "cli-w",
        ],
        cwd=tmp_path,
        env=settings_env(rsettings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    log = TopicLog(rsettings, "rollout-events", RolloutEvent)
    try:
        records = log.wait(lambda r: len(finished(r)) == 2, timeout=40)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
        log.close()
    assert process.returncode == 0, output
    statuses = {rid: evs[0].status for rid, evs in finished(records).items()}
    assert statuses == {tasks[0].rollout_id: "succeeded", tasks[1].rollout_id: "failed"}
    assert all(e.worker_id == "cli-w" for e in records)
    assert "cli-w" in output


# ---- end to end: enqueue -> lifecycle processor -> runner ---------------------------------------------------
def test_enqueued_rollouts_run_to_completion_with_the_stream_worker(
    rsettings: Settings, client: AgentStream
) -> None:
    from tests.helpers import WorkerProcess, latest_by

    rsettings = rsettings.model_copy(
        update={
            "streams": rsettings.streams.model_copy(
                update={
                    "session_timeout_ms": 2_000,
                    "heartbeat_interval_ms": 400,
                    "timer_interval_seconds": 0.1,
                }
            )
        }
    )
    worker = WorkerProcess(rsettings).start()
    try:
        worker.wait_ready()

        def agent(task: dict, rollout: agentstream.producers.Rollout) -> float:
            if task.get("flaky") and rollout.attempt_number == 1:
                raise RuntimeError("first attempt fails")
            return 1.0

        ids = client.enqueue([{"n": 1}, {"n": 2, "flaky": True}], config={"max_attempts": 2})
        with Runner(agent, rsettings, client=client):
            final = wait_for(
                lambda: (
                    s
                    if len(
                        s := latest_by(
                            read_topic(rsettings, rsettings.topic("rollout-state"), timeout=1.0),
                            "rollout_id",
                            "version",
                        )
                    )
                    == 2
                    and all(v["status"] == "succeeded" for v in s.values())
                    else None
                ),
                timeout=45,
            )
    finally:
        worker.stop()
    assert final, "rollouts did not all succeed"
    assert set(final) == set(ids)
    flaky = final[ids[1]]
    assert [(a["attempt_number"], a["status"]) for a in flaky["attempts"]] == [
        (1, "failed"),
        (2, "succeeded"),
    ]
    assert "first attempt fails" in (flaky["attempts"][0]["error"] or "")


def test_timed_out_attempt_is_requeued_and_completes_on_another_runner(
    rsettings: Settings, client: AgentStream
) -> None:
    """Runner A hangs; the stream worker times its attempt out and requeues it; runner B completes it."""
    from tests.helpers import WorkerProcess, latest_by

    rsettings = rsettings.model_copy(
        update={
            "streams": rsettings.streams.model_copy(
                update={
                    "session_timeout_ms": 2_000,
                    "heartbeat_interval_ms": 400,
                    "timer_interval_seconds": 0.1,
                }
            ),
            "runner": rsettings.runner.model_copy(update={"shutdown_grace_seconds": 0.0}),
        }
    )
    release = threading.Event()

    def hanging_agent(task: dict) -> float:
        release.wait(30)
        return 0.0

    def agent(task: dict) -> float:
        return 1.0

    def state() -> dict[str, Any]:
        return latest_by(
            read_topic(rsettings, rsettings.topic("rollout-state"), timeout=1.0), "rollout_id", "version"
        )

    worker = WorkerProcess(rsettings).start()
    try:
        worker.wait_ready()
        [rollout_id] = client.enqueue(
            {"ticket": "printer on fire"}, config={"timeout_seconds": 2.0, "max_attempts": 3}
        )
        runner_a = Runner(hanging_agent, rsettings, client=client, worker_id="runner-a").start()
        try:
            timed_out = wait_for(
                lambda: (s := state().get(rollout_id)) and s["attempts"][0]["status"] == "timeout" and s,
                timeout=30,
            )
            assert timed_out, state()
        finally:
            runner_a.stop(10)  # an attempt it still holds is handed back (released)
        with Runner(agent, rsettings, client=client, worker_id="runner-b"):
            final = wait_for(
                lambda: (s := state().get(rollout_id)) and s["status"] == "succeeded" and s, timeout=30
            )
    finally:
        release.set()
        worker.stop()
    assert final, state()
    attempts = [(a["status"], a["worker_id"]) for a in final["attempts"]]
    assert attempts[0] == ("timeout", "runner-a")
    assert attempts[-1] == ("succeeded", "runner-b")
    assert all(status in ("timeout", "failed") for status, _ in attempts[:-1])
