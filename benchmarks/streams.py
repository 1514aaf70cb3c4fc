"""Stream-worker benchmark on the embedded broker.

    python benchmarks/streams.py --json results/streams.json
    python benchmarks/streams.py --broker apache --json results/streams-apache.json

``--broker apache`` runs it on a one-node Apache Kafka (KRaft) that the benchmark starts
(``agentstream.deploy.apache_kafka``) instead of the embedded broker.

Measures (JSON keys):

* ``stream_events_per_s``: one worker draining preloaded source events (LLM-call spans, rewards,
  rollout events in the proportions of a real rollout), first to last event processed;
* ``reward_to_triplet_p50_s`` / ``_p99_s``: a reward emitted by the SDK → its triplet read by a
  consumer of the triplets topic, at a steady live load (after a 2 s warm-up);
* ``rollouts_per_s``: ``enqueue`` → stream worker queues the task → a runner runs a trivial agent →
  attempt_finished → the rollout's state is ``succeeded``, end to end, with the stack's two workers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402
from rich.console import Console  # noqa: E402

from agentstream.deploy.stack import Stack, worker_status  # noqa: E402
from agentstream.producers.client import AgentStream  # noqa: E402
from agentstream.producers.tracer import Rollout  # noqa: E402
from agentstream.schemas import AvroDeserializer, genai  # noqa: E402
from agentstream.settings import Settings  # noqa: E402

console = Console(stderr=True)
#: latency samples of the first seconds are not counted (connections, metadata, JIT-free warm-up)
WARMUP_S = 2.0
PROMPT = json.dumps(
    [{"role": "user", "parts": [{"type": "text", "content": "Route this ticket: " + "x" * 600}]}]
)
RESPONSE = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "billing"}]}])


def start_worker(settings: Settings, name: str) -> Any:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env.update(settings.to_env())
    log = open(settings.data_dir / f"{name}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "agentstream.cli", "worker"], env=env, stdout=log, stderr=log
    )


def wait_worker(settings: Settings, pid: int, predicate: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = worker_status(settings.data_dir, pid) or {}
        if predicate(status):
            return status
        time.sleep(0.05)
    raise TimeoutError(f"worker {pid}: {status}")


def emit_rollout(client: AgentStream, rollout_id: str, calls: int = 2) -> None:
    rollout = Rollout(client, rollout_id=rollout_id, attempt_id=f"{rollout_id}#1")
    for _ in range(calls):
        with client.span("chat", kind="llm", rollout=rollout) as span:
            span.set_attribute(genai.INPUT_MESSAGES, PROMPT)
            span.set_attribute(genai.OUTPUT_MESSAGES, RESPONSE)
            span.set_token_ids(list(range(200)), list(range(8)))
    client.emit_rollout_event(
        rollout_id, "attempt_finished", attempt_id=f"{rollout_id}#1", attempt_number=1, status="succeeded"
    )
    client.emit_reward(1.0, rollout_id=rollout_id, attempt_id=f"{rollout_id}#1")


def bench_events_per_s(settings: Settings, rollouts: int) -> float:
    """Preload rollouts (4 source events each), then time one worker draining them."""
    with AgentStream(settings) as client:
        for i in range(rollouts):
            emit_rollout(client, f"pre-{i}")
        client.flush(120)
    total = rollouts * 4  # 2 spans, attempt_finished, reward
    process = start_worker(settings, "events-worker")
    try:
        first = wait_worker(settings, process.pid, lambda s: s.get("events", 0) > 0, 120)
        t0 = time.monotonic()
        n0 = first["events"]
        last = wait_worker(settings, process.pid, lambda s: s.get("events", 0) >= total, 600)
        elapsed = time.monotonic() - t0
        return (last["events"] - n0) / elapsed
    finally:
        process.terminate()
        process.wait(30)


def bench_reward_to_triplet(settings: Settings, seconds: float, rate: float) -> list[float]:
    """Live: rollouts at ``rate``/s; latency from each reward's emit time to its triplet's arrival."""
    process = start_worker(settings, "latency-worker")
    latencies: list[float] = []
    try:
        wait_worker(settings, process.pid, lambda s: s.get("ready"), 120)
        consumer = Consumer(settings.consumer_config("bench-triplets", **{"fetch.wait.max.ms": 10}))
        topic = settings.topic("triplets")
        meta = consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.topics[topic].partitions])
        decode = AvroDeserializer()
        sent: dict[str, float] = {}
        stop = threading.Event()
        first_sent = time.time()

        def produce() -> None:
            with AgentStream(settings) as client:
                i = 0
                start = time.monotonic()
                while not stop.is_set() and time.monotonic() - start < seconds:
                    rollout_id = f"live-{i}"
                    rollout = Rollout(client, rollout_id=rollout_id, attempt_id=f"{rollout_id}#1")
                    with client.span("chat", kind="llm", rollout=rollout) as span:
                        span.set_attribute(genai.INPUT_MESSAGES, PROMPT)
                        span.set_attribute(genai.OUTPUT_MESSAGES, RESPONSE)
                    sent[rollout_id] = time.time()
                    client.emit_reward(1.0, rollout_id=rollout_id, attempt_id=f"{rollout_id}#1")
                    i += 1
                    time.sleep(max(0.0, start + i / rate - time.monotonic()))
                client.flush(30)

        producer = threading.Thread(target=produce)
        producer.start()
        deadline = time.monotonic() + seconds + 30
        seen: set[str] = set()
        while time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.05):
                if message.error():
                    continue
                arrived = time.time()
                triplet = decode(message.value())
                rollout_id = triplet["rollout_id"]
                if rollout_id in sent and rollout_id not in seen:
                    seen.add(rollout_id)
                    if sent[rollout_id] - first_sent >= WARMUP_S:
                        latencies.append(arrived - sent[rollout_id])
            if not producer.is_alive() and len(seen) >= len(sent):
                break
        stop.set()
        producer.join()
        consumer.close()
        missing = len(sent) - len(seen)
        if missing:
            console.print(f"[yellow]{missing} rewards without a triplet within the window[/]")
        return latencies
    finally:
        process.terminate()
        process.wait(30)


def bench_rollouts_per_s(settings: Settings, rollouts: int, concurrency: int) -> float:
    """enqueue → runner (trivial agent) → succeeded, with the stack's stream workers."""
    from agentstream.producers.runner import Runner

    def agent(task: Any) -> None:
        return None

    counted = threading.Event()
    result: dict[str, float] = {}

    def count_succeeded() -> None:
        consumer = Consumer(settings.consumer_config("bench-states", **{"fetch.wait.max.ms": 10}))
        topic = settings.topic("rollout-state")
        meta = consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.topics[topic].partitions])
        decode = AvroDeserializer()
        done: set[str] = set()
        while len(done) < rollouts and not counted.is_set():
            for message in consumer.consume(1000, timeout=0.05):
                if message.error():
                    continue
                state = decode(message.value())
                if state["status"] == "succeeded" and state["rollout_id"].startswith("e2e-"):
                    done.add(state["rollout_id"])
        result["end"] = time.monotonic()
        consumer.close()

    watcher = threading.Thread(target=count_succeeded)
    watcher.start()
    runner = Runner(agent, settings, concurrency=concurrency).start()
    try:
        time.sleep(3.0)  # the runner's group join
        with AgentStream(settings) as client:
            start = time.monotonic()
            for i in range(0, rollouts, 500):
                client.enqueue([{"rollout_id": f"e2e-{j}"} for j in range(i, min(i + 500, rollouts))])
            client.flush(60)
        watcher.join(600)
        counted.set()
        return rollouts / (result.get("end", time.monotonic()) - start)
    finally:
        runner.stop(30)


def start_broker(kind: str, data_dir: Path, stack: contextlib.ExitStack) -> str | None:
    """Bootstrap servers of an Apache Kafka node started for the run; None for Tansu, which the
    agentstream stack embeds."""
    if kind == "tansu":
        return None
    from agentstream.deploy.apache_kafka import KafkaCluster

    return stack.enter_context(KafkaCluster(brokers=1, data_dir=data_dir / "kafka")).bootstrap_servers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--rollouts", type=int, default=4_000, help="preloaded rollouts for events/s")
    parser.add_argument("--e2e-rollouts", type=int, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--latency-rate", type=float, default=100.0, help="rollouts/s during the latency run")
    parser.add_argument("--concurrency", type=int, default=32, help="runner concurrency")
    parser.add_argument(
        "--broker", choices=("tansu", "apache"), default="tansu", help="embedded Tansu or Apache Kafka"
    )
    args = parser.parse_args()

    figures: dict[str, Any] = {"cpus": os.cpu_count(), "broker": args.broker}
    with tempfile.TemporaryDirectory(prefix="agentstream-bench-") as tmp, contextlib.ExitStack() as brokers:
        base = Settings(
            bootstrap_servers=start_broker(args.broker, Path(tmp), brokers),
            data_dir=Path(tmp) / "stack",
            partitions=8,
            streams={"session_timeout_ms": 2000, "heartbeat_interval_ms": 500},
            runner={"session_timeout_ms": 2000},
        )
        with Stack(base, sink=False, workers=0) as stack:
            settings = stack.resolved_settings()
            for name, prefix in (("events", "ev."), ("latency", "lat.")):
                part = settings.model_copy(update={"topic_prefix": prefix, "data_dir": Path(tmp) / name})
                part.data_dir.mkdir(parents=True)
                from agentstream.topics.admin import ensure_topics

                ensure_topics(part)
                if name == "events":
                    with console.status("stream_events_per_s ..."):
                        figures["stream_events_per_s"] = round(bench_events_per_s(part, args.rollouts))
                    console.print(f"stream_events_per_s {figures['stream_events_per_s']}")
                else:
                    with console.status("reward → triplet latency ..."):
                        latencies = sorted(
                            bench_reward_to_triplet(part, args.latency_seconds, args.latency_rate)
                        )
                    figures["reward_to_triplet_p50_s"] = round(statistics.median(latencies), 4)
                    figures["reward_to_triplet_p99_s"] = round(latencies[int(0.99 * (len(latencies) - 1))], 4)
                    figures["reward_to_triplet_samples"] = len(latencies)
                    console.print(
                        f"reward_to_triplet p50 {figures['reward_to_triplet_p50_s']}s "
                        f"p99 {figures['reward_to_triplet_p99_s']}s ({len(latencies)} samples)"
                    )
        e2e = base.model_copy(update={"data_dir": Path(tmp) / "e2e", "topic_prefix": "e2e."})
        with Stack(e2e, sink=False, workers=2) as stack:
            stack.wait_ready(120)
            with console.status("rollouts_per_s ..."):
                figures["rollouts_per_s"] = round(
                    bench_rollouts_per_s(stack.resolved_settings(), args.e2e_rollouts, args.concurrency)
                )
            console.print(f"rollouts_per_s {figures['rollouts_per_s']}")
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
