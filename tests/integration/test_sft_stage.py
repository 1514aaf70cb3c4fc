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

from agentstream.examples.sft_stage import (
    DISTILLED_PREFIX,
    DISTILLED_TEMPLATE,
    MODEL_RESOURCE,
    model_for,
    publish_base_model,
    publish_bound_prompt,
    run_sft_stage,
)
from agentstream.examples.support_agent import PROMPT_MODEL, SupportAgent
from agentstream.resources.store import ResourceStore
from agentstream.schemas import AvroSerializer, ResourceKind, Triplet, render_template
from agentstream.serving.model_server import ModelServer
from agentstream.settings import Settings
from agentstream.trainers.sft import StreamSFTConfig, StreamSFTTrainer

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
    template: str = "Ticket: {{ticket}}\nAction:",
    resource_version: str = "3",
) -> Triplet:
    """One logged call of the support prompt, credited ``dimensions`` (its scalar is the first)."""
    now = time.time_ns() // 1_000
    rollout_id = f"ro-{uuid.uuid4().hex[:12]}"
    prompt = render_template(template, {"ticket": ticket})
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
        resource_version=resource_version,
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
        key = {"Authorization": f"Bearer {server.token}"}
        response = httpx.post(
            f"{server.base_url}/completions",
            headers=key,
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
        models = httpx.get(f"{server.base_url}/models", headers=key, timeout=10).json()["data"]
        assert name in {m["id"] for m in models}


SEED = "Route the ticket to its queue.\n\nTicket: {{ticket}}\nAction:"


def test_sft_stage_distils_the_good_calls_into_the_bare_ticket_prompt_and_a_prompt_version_runs_on_it(
    tsettings: Settings, store: ResourceStore, tiny_model: Path
) -> None:
    seed = store.publish("support-prompt", template=SEED, labels=["production"])

    def answered(ticket: str, queue: str, dimensions: dict[str, float] = GOOD) -> Triplet:
        return call(ticket, queue, dimensions, template=SEED, resource_version=str(seed.version))

    good = [answered(f"my parcel {i} is late", "shipping") for i in range(3)]
    good.append(answered("card declined at checkout", "billing"))
    triplets = [
        *good,
        answered("my parcel 0 is late", "shipping"),  # the same ticket answered alike: one example
        answered("I was charged twice", "shipping", {"routing": 0.5, "resolution": 1.0}),  # wrong
        call("an older prompt", "technical", GOOD, resource_version=str(seed.version)),  # not SEED's text
    ]
    produce(tsettings, triplets)

    # the rows: each good call's ticket in the distilled prompt, its answer after the prefix
    config = StreamSFTConfig(
        resource_name=MODEL_RESOURCE,
        base_model=str(tiny_model),
        from_resource="support-prompt",
        format="text",
        prompt_template=DISTILLED_TEMPLATE,
        response_prefix=DISTILLED_PREFIX,
    )
    rows = StreamSFTTrainer(config, tsettings, store=store).distilled_rows(triplets)
    # (the reward filter runs before rows are made: here the wrong call is a row like any other)
    tickets = [
        *(f"my parcel {i} is late" for i in range(3)),
        "card declined at checkout",
        "I was charged twice",
    ]
    queues = ["shipping", "shipping", "shipping", "billing", "shipping"]
    assert rows == [
        {
            "prompt": f'Ticket: {ticket}\nAction: create_ticket({{"queue": "',
            "completion": f'{queue}", "priority": "normal"}})',
        }
        for ticket, queue in zip(tickets, queues, strict=True)
    ]
    with pytest.raises(ValueError, match="from_resource"):
        StreamSFTConfig(resource_name=MODEL_RESOURCE, base_model="x", prompt_template=DISTILLED_TEMPLATE)

    model = run_sft_stage(
        tsettings,
        store,
        base_model=tiny_model,
        lora_r=4,
        epochs=1,
        batch_size=4,
        max_length=64,
        settle_seconds=2.0,
        label=None,
        prompt_template=DISTILLED_TEMPLATE,
        response_prefix=DISTILLED_PREFIX,
    )
    assert model.resource_name == MODEL_RESOURCE and model.version == 1
    assert model.lineage["metrics.examples"] == "4"  # 5 good calls of SEED, one of them a repeat
    assert model.config["prompt_template"] == DISTILLED_TEMPLATE
    assert model.config["response_prefix"] == DISTILLED_PREFIX
    assert store.labels(MODEL_RESOURCE) == {}  # unlabelled: the prompt bound to it is what is A/B-tested

    bound = publish_bound_prompt(store, model, seed)
    assert bound.version == seed.version + 1 and bound.template == DISTILLED_TEMPLATE
    assert bound.config == {"response_prefix": DISTILLED_PREFIX, PROMPT_MODEL: f"{MODEL_RESOURCE}:v1"}
    assert bound.parent_version == seed.version
    assert bound.lineage["trainer"] == "sft" and bound.lineage["sft.model"] == f"{MODEL_RESOURCE}:v1"
    assert bound.lineage["sft.metrics.examples"] == "4"
    assert store.labels("support-prompt") == {"production": seed.version}

    # the agent sends the bound version's requests to the model server, which answers as that version
    with ModelServer(tsettings, [MODEL_RESOURCE], store=store, port=0) as server:
        agent = SupportAgent("http://127.0.0.1:9/v1", "gemma-3-270m")
        agent.serve(MODEL_RESOURCE, server.base_url, api_key=server.token)
        client, name = agent.endpoint(cast(Any, SimpleNamespace(resource=lambda _: bound)))
        completion = client.completions.create(
            model=name, prompt=bound.render(ticket="where is my parcel") + DISTILLED_PREFIX, max_tokens=4
        )
        assert completion.model == f"{MODEL_RESOURCE}:v1"
