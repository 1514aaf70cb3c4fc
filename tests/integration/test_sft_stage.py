"""The demo's SFT stage against the real broker: good calls in, a LoRA version out, served by name.

Triplets are written to the triplet topic as the stream worker writes them; the tiny model
(``tests/tinymodel.py``) stands in for Gemma, so the stage trains a few steps on CPU in seconds.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from confluent_kafka import Producer

from agentstream.examples.sft_stage import MODEL_RESOURCE, model_for, publish_base_model, run_sft_stage
from agentstream.resources.store import ResourceStore
from agentstream.schemas import AvroSerializer, ResourceKind, Triplet
from agentstream.serving.model_server import ModelServer
from agentstream.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def tsettings(settings: Settings) -> Settings:
    trainer = settings.trainer.model_copy(update={"session_timeout_ms": 2_000})
    return settings.model_copy(update={"trainer": trainer})


@pytest.fixture
def store(tsettings: Settings) -> Iterator[ResourceStore]:
    with ResourceStore(tsettings, who="test") as opened:
        yield opened


def call(
    ticket: str,
    queue: str,
    dimensions: dict[str, float],
    *,
    mode: str = "train",
    resource: str = "support-prompt",
) -> Triplet:
    """One logged call of the support prompt, credited ``dimensions`` (its scalar is the first)."""
    now = time.time_ns() // 1_000
    rollout_id = f"ro-{uuid.uuid4().hex[:12]}"
    prompt = f"Ticket: {ticket}\nAction:"
    answer = f' create_ticket({{"queue": "{queue}", "priority": "normal"}})'
    return Triplet(
        triplet_id=f"{rollout_id}:0",
        version=1,
        rollout_id=rollout_id,
        attempt_id=f"{rollout_id}#1",
        span_id=uuid.uuid4().hex[:16],
        prompt_messages=json.dumps([{"role": "user", "parts": [{"type": "text", "content": prompt}]}]),
        response=json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]),
        reward=next(iter(dimensions.values())),
        reward_dimensions=dimensions,
        resource_name=resource,
        resource_version="3",
        mode=mode,
        task_type="support",
        model="gemma-3-270m",
        created_at=now,
        emitted_at=now,
    )


def produce(settings: Settings, triplets: list[Triplet]) -> None:
    serializer = AvroSerializer(Triplet.avro_schema())
    producer = Producer(settings.producer_config())
    for t in triplets:
        producer.produce(settings.topic("triplets"), serializer(t.to_avro()), t.rollout_id.encode())
    assert producer.flush(15) == 0


GOOD = {"routing": 1.0, "resolution": 1.0}  # routed right and resolved (or filed by a human)


def test_sft_stage_publishes_a_candidate_adapter_with_lineage_that_the_model_server_serves(
    tsettings: Settings, store: ResourceStore, tiny_model: Path
) -> None:
    good = [call(f"my parcel {i} is late", "shipping", GOOD) for i in range(6)]
    produce(
        tsettings,
        [
            *good[:3],
            call(
                "I was charged twice", "shipping", {"routing": 0.5, "resolution": 1.0}
            ),  # wrong, resolved anyway
            call("the app crashes", "technical", {"routing": 1.0, "resolution": 0.0}),  # right, escalated
            call("card declined", "billing", GOOD, mode="val"),  # an evaluation replay
            call("refund the fee", "billing", GOOD, resource="other-prompt"),
            *good[3:],
        ],
    )
    base = publish_base_model(tsettings, store, base_model=tiny_model)
    assert (base.version, base.kind) == (1, ResourceKind.LLM)
    assert store.wait_for(lambda s: s.labels(MODEL_RESOURCE).get("production") == 1)
    assert publish_base_model(tsettings, store, base_model=tiny_model).version == 1  # idempotent

    version = run_sft_stage(
        tsettings,
        store,
        base_model=tiny_model,
        lora_r=4,
        epochs=2,
        learning_rate=5e-3,
        batch_size=4,
        max_length=64,
        settle_seconds=2.0,
        idle_timeout=60.0,
    )

    assert version.resource_name == MODEL_RESOURCE and version.version == 2
    assert version.kind == ResourceKind.LLM
    assert store.wait_for(lambda s: s.labels(MODEL_RESOURCE).get("candidate") == 2)
    assert version.config["adapter"] == "true" and version.config["base_model"] == str(tiny_model)
    assert (Path(cast(str, version.uri)) / "adapter_config.json").is_file()
    lineage = version.lineage
    assert lineage["base_model"] == str(tiny_model)
    assert lineage["metrics.examples"] == "6"  # only the good train/prod calls of the support prompt
    assert lineage["window.count"] == "6" and lineage["window.id"]
    assert json.loads(lineage["trainer.filter"])["reward_of"] == "sum"
    assert lineage["sft.epochs"] == "2" and lineage["sft.lora_r"] == "4"
    assert float(lineage["metrics.train_loss_last"]) < float(lineage["metrics.train_loss_first"])

    rollout = SimpleNamespace(resource=lambda name: store.get(name, 2))
    name = model_for(cast(Any, rollout))
    assert name == f"{MODEL_RESOURCE}:v2"
    with ModelServer(tsettings, [MODEL_RESOURCE], store=store, port=0) as server:
        response = httpx.post(
            f"{server.base_url}/completions",
            json={
                "model": name,
                "prompt": "Ticket: where is my order\nAction:",
                "max_tokens": 4,
                "temperature": 0,
            },
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"] == name
        assert name in {m["id"] for m in httpx.get(f"{server.base_url}/models", timeout=10).json()["data"]}
