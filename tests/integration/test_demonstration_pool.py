"""The demonstration pool, curated live from the triplets topic on a real broker: which triplets get
in (good, trainable, not evaluation), deduplication, versions with lineage, and a runner's render
picking up a new example without a new prompt version."""

from __future__ import annotations

import json
import uuid

import pytest

from agentstream.producers.prompts import render_prompt
from agentstream.resources.store import ResourceStore
from agentstream.retrieval import DemonstrationPool
from agentstream.schemas import PRODUCTION, Triplet, now_us
from agentstream.settings import Settings
from agentstream.topics.catalogue import TRIPLETS
from agentstream.topics.io import RecordWriter
from agentstream.trainers.demonstrations import CuratorConfig, DemonstrationCurator

pytestmark = pytest.mark.integration

QUERY = "Ticket: {{ticket}}\nAction:"


def triplet(
    version: str,
    ticket: str,
    queue: str,
    *,
    dims: dict[str, float],
    mode: str = "train",
    model: str = "gemma",
    retracted: bool = False,
    revision: int = 1,
    triplet_id: str | None = None,
) -> Triplet:
    now = now_us()
    prompt = f"Ticket: {ticket}\nAction:"
    return Triplet(
        triplet_id=triplet_id or uuid.uuid4().hex,
        version=revision,
        rollout_id=uuid.uuid4().hex,
        span_id=uuid.uuid4().hex[:16],
        prompt_messages=json.dumps([{"role": "user", "parts": [{"type": "text", "content": prompt}]}]),
        response=json.dumps(
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": f' create_ticket({{"queue": "{queue}"}})'}],
                }
            ]
        ),
        reward=dims.get("routing"),
        reward_dimensions=dims,
        retracted=retracted,
        resource_name="support-prompt",
        resource_version=version,
        mode=mode,
        model=model,
        created_at=now,
        emitted_at=now,
    )


def test_the_curator_keeps_the_pool_of_good_calls_and_runners_see_new_ones_live(settings: Settings) -> None:
    good = {"routing": 1.0, "resolution": 1.0}
    with ResourceStore(settings, who="test") as store:
        seed = store.publish("support-prompt", template=QUERY, labels=[PRODUCTION])
        retrieving = store.publish(
            "support-prompt",
            template="{{demonstrations}}" + QUERY,
            config={"retrieval.pool": "support-prompt.demos", "retrieval.k": "4"},
        )
        v = str(seed.version)
        retracted_id = uuid.uuid4().hex
        records = [
            triplet(v, "charged twice", "billing", dims=good),
            triplet(v, "charged twice", "billing", dims=good),  # the same call again: one example
            triplet(v, "app crashes on start", "technical", dims=good, model="human"),
            triplet(
                v, "parcel is late", "shipping", dims={"routing": 1.0, "resolution": 0.0}
            ),  # not resolved
            triplet(v, "password reset", "account", dims=good, mode="val"),  # evaluation: never learned from
            triplet(v, "invoice wrong", "billing", dims=good, triplet_id=retracted_id),
            triplet(
                v, "invoice wrong", "billing", dims=good, triplet_id=retracted_id, retracted=True, revision=2
            ),
        ]
        writer = RecordWriter(settings)
        try:
            for record in records:
                writer.write(TRIPLETS, record.rollout_id, record)
            curator = DemonstrationCurator(
                CuratorConfig("support-prompt", min_reward=2.0, interval_s=3600), settings, store
            ).start()
            try:
                assert curator._reader is not None and curator._reader.wait_caught_up(30)
                first = curator.publish_now()
                assert first is not None
                pool = DemonstrationPool.from_version(first)
                assert sorted(d.values["ticket"] for d in pool.examples) == [
                    "app crashes on start",
                    "charged twice",
                ]
                assert {d.source for d in pool.examples} == {"model", "human"}
                assert first.lineage["trainer"] == "curator" and first.lineage["triplets.count"] == "3"
                assert store.labels("support-prompt.demos")[PRODUCTION] == first.version
                assert curator.publish_now() is None  # nothing new: no new version

                # a new good call joins the next version live, and the next render retrieves it
                late = triplet(v, "my parcel never arrived", "shipping", dims=good)
                writer.write(TRIPLETS, late.rollout_id, late)
                assert store.wait_for(lambda _: curator._newest.get(late.triplet_id) is not None, 30)
                second = curator.publish_now()
                assert second is not None and second.parent_version == first.version
                assert second.lineage["pool.added"] == "1"
            finally:
                curator.stop()
        finally:
            writer.close()
        assert store.wait_for(lambda s: s.labels("support-prompt.demos")[PRODUCTION] == second.version, 15)
        resolved = {
            "support-prompt": store.get("support-prompt", retrieving.version),
            "support-prompt.demos": store.get("support-prompt.demos", PRODUCTION),
        }
        prompt = render_prompt(resolved, "support-prompt", {"ticket": "where is my parcel"})
        assert prompt.demonstrations[-1].values["ticket"] == "my parcel never arrived"
        assert prompt.text.endswith("Ticket: where is my parcel\nAction:")
        assert store.get("support-prompt", PRODUCTION).version == seed.version  # the prompt never moved
