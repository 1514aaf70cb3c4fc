"""Broker faults on a 3-node Apache Kafka cluster while an agent emits and the workers join.

Shared by ``tests/integration/test_broker_faults.py`` (small) and ``benchmarks/broker_faults.py``
(larger). The scenario:

* a 3-node :class:`~agentstream.deploy.apache_kafka.KafkaCluster`, every topic with replication
  factor 3 and ``min.insync.replicas=2`` (``Settings.min_insync_replicas``), the SDK's idempotent
  ``acks=all`` producer;
* a sink process and a stream-worker process (``tests/helpers.py``), started once and never
  restarted by us;
* an :class:`EmitLoop` thread: rollouts of LLM calls and one reward each, continuously, labelled
  with the phase they were emitted in; each emit call's return time and duration is kept;
* phase ``leader_kills``: SIGKILL the leader of the spans partition, bring it back, wait for a full
  ISR; then the same for the leader of the triplets partition (another node if it is the same one);
  phase ``rolling_restart``: controlled stop → start → full ISR, node by node.

Then everything is counted from ClickHouse (:func:`count`): sent, stored, lost, duplicate rows
(with and without FINAL: the tables are ReplacingMergeTree, so duplicates FINAL collapses are
harmless), and the triplets: missing, duplicate, or with a reward other than the one emitted.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from agentstream.clickhouse.connect import connect
from agentstream.deploy.apache_kafka import KafkaCluster
from agentstream.producers.client import AgentStream
from agentstream.schemas import genai
from agentstream.settings import Settings
from agentstream.topics.admin import ensure_topics
from tests.helpers import SinkProcess, WorkerProcess, wait_for

PROMPT = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "Where is my parcel? #4411"}]}])
RESPONSE = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "On its way."}]}])
#: the topics whose every partition must be fully replicated again before the next fault
WATCHED = ("spans", "rewards", "rollout-events", "triplets", "rollout-state")


def cluster_settings(cluster: KafkaCluster, data_dir: Path, prefix: str, partitions: int) -> Settings:
    """Settings on ``cluster``: replication 3, min ISR 2, quick failover of the consumer groups."""
    return Settings(
        bootstrap_servers=cluster.bootstrap_servers,
        data_dir=data_dir,
        topic_prefix=prefix,
        partitions=partitions,
        replication_factor=3,
        min_insync_replicas=2,
        sink={
            "batch_max_seconds": 0.2,
            "retry_initial_seconds": 0.05,
            "retry_max_seconds": 0.5,
            "session_timeout_ms": 2000,
        },
        streams={
            "session_timeout_ms": 2_000,
            "heartbeat_interval_ms": 400,
            "commit_interval_seconds": 0.5,
            "metrics_flush_seconds": 0.5,
            # every LLM call of a rollout is credited the rollout's reward: a wrong triplet shows
            "default_credit_assignment": "final_broadcast",
        },
        dashboard={"port": 0},
        otlp={"http_port": 0, "grpc_port": 0},
    )


@dataclass
class Sent:
    rollout_id: str
    phase: str
    reward: float
    span_ids: list[str]


@dataclass(eq=False)  # a Thread must stay hashable (threading keeps a WeakSet of them)
class EmitLoop(threading.Thread):
    """The agent: rollouts of ``calls`` LLM calls and a reward, one after another, until stopped.

    ``phase`` names the rollouts emitted from now on. Every emit call (a span's close, a reward) is
    timed; ``errors`` keeps any exception an emit raised (there must be none).
    """

    client: AgentStream
    #: names this agent's rollouts (several loops share one client)
    agent: str = "a"
    calls: int = 2
    pace_s: float = 0.02
    phase: str = "warmup"
    sent: list[Sent] = field(default_factory=list)
    #: (perf_counter when the emit returned, its duration in seconds)
    emits: list[tuple[float, float]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, name="emit-loop", daemon=True)
        self._stop_event = threading.Event()

    def run(self) -> None:
        index = 0
        while not self._stop_event.is_set():
            index += 1
            phase = self.phase
            rollout_id = f"{phase}-{self.agent}-{index:07d}"
            reward = (index % 11) / 10  # differs between neighbours: a misrouted reward shows
            spans: list[str] = []
            try:
                with self.client.rollout(rollout_id=rollout_id) as rollout:
                    for _ in range(self.calls):
                        started = time.perf_counter()
                        with self.client.span("chat", kind="llm") as span:
                            span.set_attribute(genai.INPUT_MESSAGES, PROMPT)
                            span.set_attribute(genai.OUTPUT_MESSAGES, RESPONSE)
                            span.set_attribute(genai.REQUEST_MODEL, "test-model")
                            span.set_token_ids([1, 2, 3], [4, 5])
                            spans.append(span.span_id)
                        done = time.perf_counter()
                        self.emits.append((done, done - started))
                    started = time.perf_counter()
                    rollout.emit_reward(reward)
                    done = time.perf_counter()
                    self.emits.append((done, done - started))
            except BaseException as e:  # noqa: BLE001 - the SDK must never raise: the test asserts none did
                self.errors.append(e)
            self.sent.append(Sent(rollout_id, phase, reward, spans))
            time.sleep(self.pace_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(60)


@dataclass
class Outage:
    phase: str
    action: str  # "kill" (SIGKILL) or "stop" (controlled shutdown)
    node_id: int
    reason: str
    down_at: float = 0.0
    up_at: float = 0.0


def wait_full_isr(cluster: KafkaCluster, settings: Settings, timeout: float = 300.0) -> None:
    """Until every partition of the watched topics has all three replicas in sync (one admin
    client, one metadata request per look: the machine is busy enough with three JVMs)."""
    admin = AdminClient(cluster.admin_config())
    topics = {settings.topic(name) for name in WATCHED}

    def full() -> bool:
        try:
            metadata = admin.list_topics(timeout=10).topics
        except Exception:  # noqa: BLE001 - a metadata request during a failover: not yet
            return False
        return all(
            topic in metadata
            and all(len(p.isrs) == cluster.brokers for p in metadata[topic].partitions.values())
            for topic in topics
        )

    if not wait_for(full, timeout, interval=1.0):
        raise TimeoutError(f"ISR not full again after {timeout:.0f}s")


def _emits(loops: list[EmitLoop]) -> list[tuple[float, float]]:
    return [emit for loop in loops for emit in loop.emits]


def _set_phase(loops: list[EmitLoop], phase: str) -> None:
    for loop in loops:
        loop.phase = phase


def _down(cluster: KafkaCluster, outage: Outage, loops: list[EmitLoop], down_s: float) -> Outage:
    outage.down_at = time.perf_counter()
    if outage.action == "kill":
        cluster.kill_node(outage.node_id)
    else:
        cluster.stop_node(outage.node_id)
    # emits keep landing on the agent's side while the node is away: wait until some have returned
    wait_for(lambda: sum(outage.down_at < done for done, _ in _emits(loops)) >= 20, down_s * 4, interval=0.1)
    time.sleep(down_s)
    outage.up_at = time.perf_counter()
    cluster.start_node(outage.node_id, timeout=300)  # generous: a loaded machine slows the JVMs
    return outage


def leader_kills(
    cluster: KafkaCluster, settings: Settings, loops: list[EmitLoop], down_s: float
) -> list[Outage]:
    """SIGKILL the leader of spans[0], restart it; then the leader of triplets[0] (another node if
    that is the same one: the leader of another triplets partition, or else the next node)."""
    _set_phase(loops, "leader_kills")
    spans_leader = cluster.leader_of(settings.topic("spans"), 0)
    first = _down(cluster, Outage("leader_kills", "kill", spans_leader, "leader of spans[0]"), loops, down_s)
    wait_full_isr(cluster, settings)
    triplets = settings.topic("triplets")
    victim, reason = cluster.leader_of(triplets, 0), "leader of triplets[0]"
    if victim == first.node_id:
        others = [
            (leader, f"leader of triplets[{p}]")
            for p in range(settings.partitions)
            if (leader := cluster.leader_of(triplets, p)) != first.node_id
        ]
        victim, reason = others[0] if others else (victim % cluster.brokers + 1, "next node")
    second = _down(cluster, Outage("leader_kills", "kill", victim, reason), loops, down_s)
    wait_full_isr(cluster, settings)
    return [first, second]


def rolling_restart(
    cluster: KafkaCluster, settings: Settings, loops: list[EmitLoop], down_s: float
) -> list[Outage]:
    """Controlled stop → start → full ISR, one node after the other."""
    _set_phase(loops, "rolling_restart")
    outages = []
    for node in cluster.nodes:
        outages.append(
            _down(cluster, Outage("rolling_restart", "stop", node.node_id, "rolling"), loops, down_s)
        )
        wait_full_isr(cluster, settings)
    return outages


@dataclass
class Stack:
    settings: Settings
    sink: SinkProcess
    worker: WorkerProcess
    pids: tuple[int, int]

    def alive_unrestarted(self) -> bool:
        """Sink and worker are the processes started at the beginning, and still running."""
        return (
            (self.sink.process.pid, self.worker.process.pid) == self.pids
            and self.sink.process.poll() is None
            and self.worker.process.poll() is None
        )


@contextmanager
def running_stack(settings: Settings) -> Iterator[Stack]:
    """Topics created, a sink and a stream worker running (stopped on exit)."""
    ensure_topics(settings)
    sink = SinkProcess(settings).start()
    worker = WorkerProcess(settings).start()
    try:
        worker.wait_ready(120)
        yield Stack(settings, sink, worker, (sink.process.pid, worker.process.pid))
    finally:
        worker.stop()
        sink.stop()


def _query(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    client = connect(settings)
    try:
        return [tuple(row) for row in client.query(sql).result_rows]
    finally:
        client.close()


def wait_landed(settings: Settings, sent: list[Sent], timeout: float, stall_s: float | None = None) -> bool:
    """Until ClickHouse holds every sent LLM call and a credited triplet for each (or ``timeout``).

    With ``stall_s``, also give up once neither count has grown for that long: a benchmark tells a
    worker that is behind (counts still growing) from one that is stuck.
    """
    calls = sum(len(s.span_ids) for s in sent)
    last_counts, last_growth = (-1, -1), time.monotonic()

    def landed() -> bool:
        nonlocal last_counts, last_growth
        spans = _query(settings, "SELECT uniqExact(span_id) FROM spans WHERE kind = 'llm'")[0][0]
        triplets = _query(settings, "SELECT count() FROM triplets FINAL WHERE reward IS NOT NULL")[0][0]
        if (spans, triplets) != last_counts:
            last_counts, last_growth = (spans, triplets), time.monotonic()
        elif stall_s is not None and time.monotonic() - last_growth > stall_s:
            raise _Stalled
        return bool(spans >= calls and triplets >= calls)

    try:
        return bool(wait_for(landed, timeout, interval=1.0))
    except _Stalled:
        return False


class _Stalled(Exception):
    """No progress for ``stall_s``."""


def count(settings: Settings, sent: list[Sent]) -> dict[str, dict[str, int]]:
    """Per phase and in total: what was sent and what ClickHouse holds, lost, duplicated or wrong."""
    spans_all = dict(
        _query(settings, "SELECT span_id, count() FROM spans WHERE kind = 'llm' GROUP BY span_id")
    )
    spans_final = dict(
        _query(settings, "SELECT span_id, count() FROM spans FINAL WHERE kind = 'llm' GROUP BY span_id")
    )
    rewards_all = dict(_query(settings, "SELECT rollout_id, count() FROM rewards GROUP BY rollout_id"))
    rewards_final = dict(
        _query(settings, "SELECT rollout_id, count() FROM rewards FINAL GROUP BY rollout_id")
    )
    # rows repeating one (triplet_id, version): a re-sent triplet that FINAL collapses
    triplet_rows = dict(
        _query(
            settings,
            "SELECT span_id, count() - uniqExact(triplet_id, version) FROM triplets GROUP BY span_id",
        )
    )
    final: dict[str, list[tuple[str, float | None]]] = {}
    for triplet_id, span_id, reward in _query(
        settings, "SELECT triplet_id, span_id, reward FROM triplets FINAL"
    ):
        final.setdefault(span_id, []).append((triplet_id, reward))
    phases: dict[str, dict[str, int]] = {}
    for s in sent:
        c = phases.setdefault(s.phase, dict.fromkeys(COUNT_KEYS, 0))
        c["rollouts"] += 1
        c["sent"] += len(s.span_ids) + 1
        c["sent_calls"] += len(s.span_ids)
        stored = [spans_all.get(span, 0) for span in s.span_ids] + [rewards_all.get(s.rollout_id, 0)]
        stored_final = [spans_final.get(span, 0) for span in s.span_ids] + [
            rewards_final.get(s.rollout_id, 0)
        ]
        c["in_clickhouse"] += sum(1 for n in stored if n)
        c["lost"] += sum(1 for n in stored if not n)
        c["duplicate_rows"] += sum(n - 1 for n in stored if n > 1)
        c["duplicate_rows_final"] += sum(n - 1 for n in stored_final if n > 1)
        for span in s.span_ids:
            triplets = final.get(span, [])
            c["triplets"] += min(1, len(triplets))
            c["missing_triplets"] += not triplets
            c["duplicate_triplets"] += max(0, len(triplets) - 1)
            c["wrong_triplets"] += sum(
                1 for _, reward in triplets if reward is None or abs(reward - s.reward) > 1e-9
            )
            c["duplicate_triplet_rows"] += triplet_rows.get(span, 0)
    phases["total"] = {key: sum(p[key] for p in phases.values()) for key in COUNT_KEYS}
    return phases


COUNT_KEYS = (
    "rollouts",
    "sent",
    "sent_calls",
    "in_clickhouse",
    "lost",
    "duplicate_rows",
    "duplicate_rows_final",
    "triplets",
    "missing_triplets",
    "duplicate_triplets",
    "wrong_triplets",
    "duplicate_triplet_rows",
)


def emit_figures(loops: list[EmitLoop], outages: list[Outage]) -> dict[str, Any]:
    """How many emits returned while a node was down, and their latency then (p50/p99/max, µs)."""
    during = [
        duration for done, duration in _emits(loops) if any(o.down_at < done < o.up_at for o in outages)
    ]
    figures: dict[str, Any] = {
        "emits": len(_emits(loops)),
        "emits_during_outage": len(during),
        "emit_errors": sum(len(loop.errors) for loop in loops),
    }
    if during:
        ordered = sorted(during)
        figures["emit_us_during_outage"] = {
            "p50": round(statistics.median(ordered) * 1e6, 1),
            "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6, 1),
            "max": round(ordered[-1] * 1e6, 1),
        }
    return figures
