"""Triplet fidelity against the real broker and worker (issue 14): calls of two rollouts that share
span ids (as spans received over OTLP or imported do) each keep their own prompt, through the
cache and through re-reads of the spans topic."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from agentstream.schemas import AvroSerializer, Reward, Span, genai, load_schema
from agentstream.settings import Settings
from agentstream.topics.catalogue import HEADER_EVENT_ID
from tests.helpers import WorkerProcess, latest_by, read_topic, wait_for

SHARED_SPAN_ID = "00000000000000aa"


@pytest.fixture
def tiny_cache_worker(settings: Settings) -> Iterator[WorkerProcess]:
    # a one-call cache: the credited triplets re-read their call's span from Kafka
    streams = settings.streams.model_copy(
        update={"call_cache_size": 1, "session_timeout_ms": 2_000, "heartbeat_interval_ms": 400}
    )
    process = WorkerProcess(settings.model_copy(update={"streams": streams})).start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def call_span(rollout_id: str, prompt: str, end_us: int) -> Span:
    return Span(
        trace_id=rollout_id.encode().hex().ljust(32, "0")[:32],
        span_id=SHARED_SPAN_ID,
        rollout_id=rollout_id,
        attempt_id=f"{rollout_id}#1",
        name="chat",
        kind="llm",
        start_time=end_us - 1000,
        end_time=end_us,
        attributes={
            genai.INPUT_MESSAGES: json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
            ),
            genai.OUTPUT_MESSAGES: "[]",
        },
        prompt_token_ids=[1],
        resource_name="prompt",
        resource_version="v1",
    )


def test_rollouts_sharing_span_ids_keep_their_own_prompts(
    settings: Settings, tiny_cache_worker: WorkerProcess
) -> None:
    producer = Producer(settings.producer_config())
    encode_span, encode_reward = AvroSerializer(load_schema("span")), AvroSerializer(load_schema("reward"))

    def send(topic: str, key: str, value: bytes, event_id: str) -> None:
        producer.produce(
            settings.topic(topic),
            key=key.encode(),
            value=value,
            headers=[(HEADER_EVENT_ID, event_id.encode())],
        )

    now = int(time.time() * 1e6)
    rollouts = ("r-a", "r-b")
    for rollout_id in rollouts:
        span = call_span(rollout_id, f"prompt of {rollout_id}", now)
        send("spans", rollout_id, encode_span(span.to_avro()), SHARED_SPAN_ID)
    producer.flush(10)

    def both_joined() -> Any:
        records = read_topic(settings, settings.topic("triplets"), timeout=2)
        return len({t["rollout_id"] for t in records}) == 2 or None

    # both calls are in (each gives an uncredited triplet) before the rewards: the one-call cache
    # then holds one of them, and the other one's credited triplet re-reads its span
    assert wait_for(both_joined, timeout=60), "the calls were not joined"
    for rollout_id in rollouts:
        reward = Reward(
            reward_id=f"w-{rollout_id}",
            rollout_id=rollout_id,
            attempt_id=f"{rollout_id}#1",
            value=1.0,
            timestamp=now + 1,
        )
        send("rewards", rollout_id, encode_reward(reward.to_avro()), reward.reward_id)
    producer.flush(10)

    def credited() -> Any:
        records = read_topic(settings, settings.topic("triplets"), timeout=2)
        latest = latest_by(records, "triplet_id", "version")
        done = [t for t in latest.values() if t["reward"] == 1.0]
        return (records, latest) if len(done) == 2 else None

    result = wait_for(credited, timeout=60)
    assert result, "the two rollouts' calls were not credited"
    records, latest = result
    assert sorted(t["rollout_id"] for t in latest.values()) == list(rollouts)
    for triplet in records:  # every version, uncredited and credited
        assert f"prompt of {triplet['rollout_id']}" in triplet["prompt_messages"], triplet
    assert wait_for(
        lambda: (tiny_cache_worker.status() or {}).get("span_rereads", 0) >= 1 or None, timeout=30
    )
