"""Real instrumentations from PyPI exporting OTLP into agentstream (issue 14, item 6).

Each agent (tests/agents/) runs in its own process on the bundled Gemma model behind llama.cpp's
OpenAI-compatible server, instrumented as its ecosystem documents, and exports with the standard
OTLP/HTTP exporter (BatchSpanProcessor, force_flush) to the receiver with its bearer token. A real
stream worker turns what arrives into triplets: prompt and response messages, rewards (one
dimension or several), rollout ids from a resource attribute or the trace id. One test sends the
same export requests through the Kafka path (the Collector's ``otlp_spans`` topic, ``otlp_proto``)
and gets the same triplets.

The bundled server (llama-cpp-python) reports no token ids, and no instrumentation records them, so
the triplets here carry none; the normaliser's token-id attributes are covered by its own tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from agentstream.process.secrets import write_secret
from agentstream.producers.otlp.receiver import token_file
from agentstream.producers.otlp.service import OtlpService
from agentstream.serving.llama_cpp import GEMMA_MODEL, LocalLLMServer
from agentstream.settings import Settings
from agentstream.topics.admin import ensure_topics
from tests.helpers import WorkerProcess, latest_by, read_topic, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: what a triplet is compared on between the HTTP and the Kafka path (not when it was emitted)
SAME = (
    "triplet_id",
    "rollout_id",
    "attempt_id",
    "span_id",
    "step",
    "prompt_messages",
    "response",
    "prompt_token_ids",
    "response_token_ids",
    "reward",
    "reward_dimensions",
    "retracted",
    "model",
    "created_at",
)


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLLMServer]:
    """The bundled model server; the tests skip (saying why) only when it is not installed here (the
    demo extra: llama-cpp-python is built from source). A server that is installed but fails fails."""
    server = LocalLLMServer(log_path=tmp_path_factory.mktemp("llm") / "llm.log", threads=1)
    try:
        server.start()
    except RuntimeError as e:
        if not isinstance(e.__cause__, ImportError):
            raise
        pytest.skip(f"the bundled model server cannot be built here: {e}")
    try:
        yield server
    finally:
        server.stop()


def quick(settings: Settings, **otlp: Any) -> Settings:
    """``settings`` with a worker that reacts quickly and the receiver's options ``otlp``."""
    return settings.model_copy(
        update={
            "streams": settings.streams.model_copy(
                update={
                    "session_timeout_ms": 2_000,
                    "heartbeat_interval_ms": 400,
                    "timer_interval_seconds": 0.1,
                }
            ),
            "otlp": settings.otlp.model_copy(update={"collector_topics": [], **otlp}),
        }
    )


def run_agent(
    agent: str,
    settings: Settings,
    receiver: OtlpService,
    llm: LocalLLMServer,
    work: Path,
    *,
    resource: dict[str, str] | None = None,
    copy_dir: Path | None = None,
) -> dict[str, Any]:
    """Run ``tests/agents/<agent>.py`` against the receiver; what it did (its result JSON)."""
    result = work / f"{agent}.json"
    # a user's environment: the standard OTEL_* variables; the token only as a file, never here
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTSTREAM_", "OTEL_"))}
    attributes = {"service.name": f"test-{agent}", **(resource or {})}
    env.update(
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.http_url}/v1/traces",
        OTEL_RESOURCE_ATTRIBUTES=",".join(f"{k}={v}" for k, v in attributes.items()),
        OMP_NUM_THREADS="1",
    )
    args = [
        sys.executable,
        "-m",
        f"tests.agents.{agent}",
        "--base-url",
        llm.base_url,
        "--model",
        GEMMA_MODEL,
        "--token-file",
        str(token_file(settings)),
        "--api-key-file",
        str(write_secret(work / "llm.key", llm.api_key)),
        "--result",
        str(result),
    ]
    if copy_dir is not None:
        args += ["--copy-dir", str(copy_dir)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{agent} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(result.read_text())
    return report


def triplets_of(settings: Settings, rollout_id: str, timeout: float = 2.0) -> list[dict[str, Any]]:
    """The newest version of each triplet of ``rollout_id``, in step order."""
    records = read_topic(settings, settings.topic("triplets"), timeout=timeout)
    newest = latest_by([r for r in records if r["rollout_id"] == rollout_id], "triplet_id", "version")
    return sorted(newest.values(), key=lambda t: t["step"])


def await_triplets(
    settings: Settings, worker: WorkerProcess, rollout_id: str, calls: int, dimensions: set[str]
) -> list[dict[str, Any]]:
    """Wait until ``rollout_id`` has a triplet per call and every reward dimension was credited."""

    def complete() -> list[dict[str, Any]] | None:
        triplets = triplets_of(settings, rollout_id)
        credited = {name for t in triplets for name in t["reward_dimensions"]}
        return triplets if len(triplets) == calls and credited >= dimensions else None

    triplets = wait_for(complete, 120, interval=1.0)
    assert triplets, (
        f"rollout {rollout_id}: wanted {calls} triplets credited with {sorted(dimensions)}, have "
        f"{triplets_of(settings, rollout_id)}\nworker log:\n{worker.log.read_text()[-3000:]}"
    )
    return list(triplets)


def texts(messages_json: str) -> list[tuple[str, str]]:
    """(role, text) of each text part of an OTel GenAI messages JSON."""
    return [
        (m["role"], part.get("content", ""))
        for m in json.loads(messages_json)
        for part in m.get("parts", [])
        if part.get("type") == "text"
    ]


def check_calls(triplets: list[dict[str, Any]], report: dict[str, Any]) -> None:
    """Each triplet holds its call: the agent's prompt among the prompt messages, its output as the
    response, the model, and no retraction."""
    assert [t["step"] for t in triplets] == list(range(len(triplets)))
    for triplet, output in zip(triplets, report["outputs"], strict=True):
        prompt = texts(triplet["prompt_messages"])
        assert prompt and prompt[-1][0] == "user", prompt
        assert texts(triplet["response"]) == [("assistant", output)]
        assert triplet["model"] == GEMMA_MODEL
        assert not triplet["retracted"]
    assert texts(triplets[0]["prompt_messages"])[-1][1] == report["prompts"][0]


def with_service(settings: Settings) -> tuple[WorkerProcess, OtlpService]:
    worker = WorkerProcess(settings).start()
    receiver = OtlpService(settings).start()
    worker.wait_ready()
    return worker, receiver


def test_openai_v2_with_rollout_id_resource_and_evaluation_event(
    settings: Settings, llm: LocalLLMServer, tmp_path: Path
) -> None:
    settings = quick(settings)
    rollout_id = f"ro-{uuid.uuid4().hex[:8]}"
    worker, receiver = with_service(settings)
    try:
        report = run_agent(
            "openai_v2", settings, receiver, llm, tmp_path, resource={"agentstream.rollout.id": rollout_id}
        )
        triplets = await_triplets(settings, worker, rollout_id, 2, {"correctness"})
    finally:
        receiver.stop()
        worker.stop()
    check_calls(triplets, report)
    # the system instruction and the conversation so far are part of the second call's prompt
    assert texts(triplets[1]["prompt_messages"])[:3] == [
        ("system", "Answer with a number."),
        ("user", report["prompts"][0]),
        ("assistant", report["outputs"][0]),
    ]
    # the evaluation named the first response: it alone is credited (without the explicit target the
    # default strategy would credit the last call)
    assert [t["reward_dimensions"] for t in triplets] == [report["rewards"], {}]
    assert triplets[0]["reward"] == report["rewards"]["correctness"]
    assert triplets[1]["reward"] is None


def test_openinference_openai_rollout_is_the_trace_with_agl_reward(
    settings: Settings, llm: LocalLLMServer, tmp_path: Path
) -> None:
    settings = quick(settings)
    worker, receiver = with_service(settings)
    try:
        report = run_agent("openinference_openai", settings, receiver, llm, tmp_path)
        triplets = await_triplets(settings, worker, report["trace_id"], 2, {"reward"})
    finally:
        receiver.stop()
        worker.stop()
    check_calls(triplets, report)
    # first_occurrence: the reward goes to the last call that ended before it
    assert [t["reward"] for t in triplets] == [None, report["rewards"]["reward"]]


def test_langgraph_with_openinference_langchain_and_two_reward_dimensions(
    settings: Settings, llm: LocalLLMServer, tmp_path: Path
) -> None:
    settings = quick(settings)
    worker, receiver = with_service(settings)
    try:
        report = run_agent("langgraph_agent", settings, receiver, llm, tmp_path)
        rewards: dict[str, float] = report["rewards"]
        triplets = await_triplets(settings, worker, report["trace_id"], 2, set(rewards))
    finally:
        receiver.stop()
        worker.stop()
    # only the model calls are triplets (not the graph's and its nodes' CHAIN spans)
    check_calls(triplets, report)
    assert texts(triplets[1]["prompt_messages"])[-1] == ("user", "Now the number only.")
    # the dimensions stay apart, by name; the scalar is the primary one (no "reward": the smallest name)
    assert triplets[1]["reward_dimensions"] == rewards
    assert triplets[1]["reward"] == rewards["format"]
    assert triplets[0]["reward_dimensions"] == {}


def test_openllmetry_openai_with_rollout_level_evaluation(
    settings: Settings, llm: LocalLLMServer, tmp_path: Path
) -> None:
    settings = quick(settings)
    rollout_id = f"ro-{uuid.uuid4().hex[:8]}"
    worker, receiver = with_service(settings)
    try:
        report = run_agent(
            "openllmetry", settings, receiver, llm, tmp_path, resource={"agentstream.rollout.id": rollout_id}
        )
        triplets = await_triplets(settings, worker, rollout_id, 1, {"correctness"})
    finally:
        receiver.stop()
        worker.stop()
    check_calls(triplets, report)
    assert triplets[0]["reward"] == report["rewards"]["correctness"]


def test_the_same_export_through_the_collector_topic_gives_the_same_triplets(
    settings: Settings, llm: LocalLLMServer, tmp_path: Path
) -> None:
    rollout_id = f"ro-{uuid.uuid4().hex[:8]}"
    copies = tmp_path / "requests"
    http = quick(settings)
    worker, receiver = with_service(http)
    try:
        report = run_agent(
            "openai_v2",
            http,
            receiver,
            llm,
            tmp_path,
            resource={"agentstream.rollout.id": rollout_id},
            copy_dir=copies,
        )
        over_http = await_triplets(http, worker, rollout_id, 2, {"correctness"})
    finally:
        receiver.stop()
        worker.stop()
    assert over_http[0]["reward_dimensions"] == report["rewards"]
    requests = sorted(copies.glob("*.pb"))
    assert requests

    # a second namespace fed only by a Collector's Kafka exporter: the same request bytes, otlp_proto
    collector_topic = f"otlp_spans.{uuid.uuid4().hex[:8]}"
    kafka = quick(
        http.model_copy(
            update={"topic_prefix": f"k{uuid.uuid4().hex[:10]}.", "data_dir": tmp_path / "kafka"}
        ),
        collector_topics=[collector_topic],
        collector_encoding="otlp_proto",
    )
    ensure_topics(kafka)
    admin = AdminClient(kafka.admin_config())
    for future in admin.create_topics([NewTopic(collector_topic, 1, 1)]).values():
        future.result(15)
    producer = Producer(kafka.producer_config())
    for request in requests:
        producer.produce(collector_topic, request.read_bytes())
    assert producer.flush(15) == 0
    worker, receiver = with_service(kafka)
    try:
        over_kafka = await_triplets(kafka, worker, rollout_id, 2, {"correctness"})
    finally:
        receiver.stop()
        worker.stop()
    assert [{k: t[k] for k in SAME} for t in over_kafka] == [{k: t[k] for k in SAME} for t in over_http]
