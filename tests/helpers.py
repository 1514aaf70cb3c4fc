"""Test helpers that talk to the real broker."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from agentstream.deploy.apache_kafka import KafkaCluster
from agentstream.deploy.broker import EmbeddedBroker
from agentstream.producers.tracer import ActiveSpan, Rollout
from agentstream.schemas import AvroDeserializer, genai
from agentstream.settings import Settings


def read_topic(
    settings: Settings,
    topic: str,
    expected: int | None = None,
    timeout: float = 15.0,
    decode: bool = True,
    quiet: float = 1.0,
) -> list[Any]:
    """Every record of ``topic`` (all partitions, from the beginning).

    Stops when ``expected`` records were read, or when nothing arrived for ``quiet`` seconds after
    ``timeout``... whichever comes first; decoded with the shipped schemas unless ``decode=False``
    (then the raw messages are returned).
    """
    consumer = Consumer(settings.consumer_config("test-reader", **{"enable.partition.eof": False}))
    metadata = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.topics[topic].partitions])
    deserializer = AvroDeserializer()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expected is not None and len(records) >= expected:
                break
            if expected is None and records and time.monotonic() - last > quiet:
                break
            for message in consumer.consume(1000, timeout=0.1):
                if message.error():
                    continue
                last = time.monotonic()
                records.append(deserializer(message.value()) if decode else message)
    finally:
        consumer.close()
    return records


Broker: TypeAlias = EmbeddedBroker | KafkaCluster
"""What the ``broker`` fixture is: the embedded Tansu or a 1-node Apache Kafka (``--broker``)."""


def own_broker(kind: str, directory: Path, port: int = 0) -> Broker:
    """A broker of the session's kind (``broker_kind``), not started, for a test that kills or
    restarts it: ``.start()`` it or use it as a context manager.

    ``port`` is its client port (0: a free one), e.g. the port a client was given before the
    broker existed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "apache":
        return KafkaCluster(brokers=1, data_dir=directory / "kafka", port=port)
    return EmbeddedBroker(port, log_path=directory / "broker.log")


def kill_broker(broker: Broker) -> None:
    """SIGKILL the broker: Tansu loses its memory-only log, an Apache node keeps its storage."""
    if isinstance(broker, KafkaCluster):
        for node in broker.nodes:
            broker.kill_node(node.node_id)
    else:
        broker.kill()


def restart_broker(broker: Broker) -> None:
    """Start a killed broker again on the same address; returns once it answers metadata."""
    if isinstance(broker, KafkaCluster):
        for node in broker.nodes:
            if not node.is_running():
                broker.start_node(node.node_id)
    else:
        broker.restart()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process build the same settings."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env.update(settings.to_env())
    env["OMP_NUM_THREADS"] = "1"
    return env


class ChildProcess:
    """An agentstream command in a child process: SIGKILL or stop it."""

    process: Any = None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except Exception:
                self.process.kill()
                self.process.wait()


class SinkProcess(ChildProcess):
    """``agentstream sink`` in a child process (it owns its own chDB directory)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = settings.data_dir / "sink.log"
        self.process: Any = None

    def start(self, timeout: float = 60.0) -> SinkProcess:
        import subprocess
        import sys

        from agentstream.clickhouse.gateway import GatewayState

        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentstream.cli", "sink"],
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"sink exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            state = GatewayState.load(self.settings.chdb_path)
            if (
                state is not None
                and state.pid == self.process.pid
                and (self.status() or {}).get("assigned_partitions")
            ):
                return self
            time.sleep(0.1)
        raise TimeoutError(f"sink not ready:\n{self.log.read_text()[-3000:]}")

    def status(self) -> dict[str, Any] | None:
        from agentstream.clickhouse.gateway import GatewayState

        state = GatewayState.load(self.settings.chdb_path)
        return state.status() if state is not None else None


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class WorkerProcess(ChildProcess):
    """``agentstream worker`` (a Faust stream worker) in a child process."""

    def __init__(self, settings: Settings, name: str = "worker") -> None:
        self.settings = settings
        self.log = settings.data_dir / f"{name}.log"
        self.process: Any = None

    def start(self) -> WorkerProcess:
        import subprocess
        import sys

        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentstream.cli", "worker", "--loglevel", "warning"],
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def status(self) -> dict[str, Any] | None:
        from agentstream.process.status import read_status

        return read_status(self.settings.data_dir, self.process.pid)

    def wait_ready(self, timeout: float = 60.0) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            if (self.status() or {}).get("ready"):
                return self
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready:\n{self.log.read_text()[-3000:]}")


def latest_by(records: list[dict[str, Any]], key: str, version: str) -> dict[str, dict[str, Any]]:
    """The record with the highest ``version`` per ``key`` (a compacted topic's or a replacing table's view)."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        current = out.get(record[key])
        if current is None or record[version] >= current[version]:
            out[record[key]] = record
    return out


class RecordingEmitter:
    """A test double of the tracer's ``Emitter`` protocol: it keeps what it is given."""

    def __init__(self) -> None:
        self.spans: list[ActiveSpan] = []
        self.lifecycle: list[str] = []

    def span(
        self,
        name: str,
        *,
        kind: str = "other",
        attributes: Mapping[str, Any] | None = None,
        rollout: Rollout | None = None,
    ) -> ActiveSpan:
        return ActiveSpan(self, name, kind, rollout, None, attributes)

    def emit_span(self, span: ActiveSpan) -> None:
        self.spans.append(span)

    def emit_reward(self, value: float, *args: Any, **kwargs: Any) -> str:
        return ""

    def rollout_started(self, rollout: Rollout) -> None:
        self.lifecycle.append("started")

    def rollout_finished(self, rollout: Rollout) -> None:
        self.lifecycle.append("finished")


def llm_call(client: Any, rollout: Rollout, prompt: str, response: str, **attributes: Any) -> str:
    """Emit one LLM-call span (GenAI messages, model, token ids, the prompt resource v1) of
    ``rollout`` through ``client`` (an ``AgentStream``); returns its span id."""
    with client.span("chat", kind="llm", rollout=rollout) as span:
        span.set_attribute(
            genai.INPUT_MESSAGES,
            json.dumps([{"role": "user", "parts": [{"type": "text", "content": prompt}]}]),
        )
        span.set_attribute(
            genai.OUTPUT_MESSAGES,
            json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": response}]}]),
        )
        span.set_attribute(genai.REQUEST_MODEL, "test-model")
        span.set_attributes(attributes)
        span.set_token_ids([1, 2, 3], [4, 5])
        span.set_resource("prompt", "v1")
        return str(span.span_id)


def emit_finished_rollout(
    client: Any, rollout_id: str, prompts: Sequence[tuple[str, str]], reward: float = 1.0
) -> None:
    """Enqueue ``rollout_id`` and emit its one attempt through ``client``: an LLM call per (prompt,
    response), ``attempt_finished`` (succeeded) and a reward on the attempt."""
    attempt_id = f"{rollout_id}#1"
    client.enqueue({"rollout_id": rollout_id})
    rollout = Rollout(client, rollout_id=rollout_id, attempt_id=attempt_id)
    for prompt, response in prompts:
        llm_call(client, rollout, prompt, response)
    client.emit_rollout_event(
        rollout_id, "attempt_finished", attempt_id=attempt_id, attempt_number=1, status="succeeded"
    )
    client.emit_reward(reward, rollout_id=rollout_id, attempt_id=attempt_id)
