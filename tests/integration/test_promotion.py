"""The promotion controller on synthetic metric streams through the real broker: promote, hold and
roll back, each recorded as a decision with its evidence before the labels move."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from confluent_kafka import Producer

from agentstream.resources.store import ResourceStore
from agentstream.schemas import AvroSerializer, VersionMetrics
from agentstream.settings import Settings
from agentstream.streams.promotion import PromotionController
from agentstream.streams.promotion_policy import TEST_NAME, ArmStats, PromotionPolicy
from tests.helpers import read_topic

pytestmark = pytest.mark.integration

WINDOW_US = 10_000_000


def send_metrics(
    settings: Settings, name: str, version: int, n: int, successes: int, since_us: int, mode: str = "train"
) -> None:
    """Spread n rollouts of ``mode`` over windows and partitions as partials, each sent with two
    revisions."""
    serializer = AvroSerializer(VersionMetrics.avro_schema())
    producer = Producer(settings.producer_config())
    rng = random.Random(version)
    start = since_us - since_us % WINDOW_US
    cells = [(w, p) for w in range(3) for p in range(2)]
    left_n, left_s = n, successes
    for i, (w, p) in enumerate(cells):
        last = i == len(cells) - 1
        cell_n = left_n if last else left_n // (len(cells) - i)
        cell_s = left_s if last else min(cell_n, left_s // (len(cells) - i))
        left_n, left_s = left_n - cell_n, left_s - cell_s
        base = time.time_ns() // 1000  # partials are cumulative: a later send is a newer revision
        for revision, share in ((base, 0.5), (base + 1, 1.0)):
            record = VersionMetrics(
                resource_name=name,
                resource_version=str(version),
                window_start=start + w * WINDOW_US,
                window_end=start + (w + 1) * WINDOW_US,
                source_partition=p,
                mode=mode,
                revision=revision,
                rollouts=int(cell_n * share),
                succeeded=int(cell_s * share),
                emitted_at=start,
            )
            key = f"{name}/{version}/{record.window_start}/{p}/{mode}".encode()
            producer.produce(settings.topic("metrics"), serializer(record.to_avro()), key)
        if rng.random() < 0.5:
            producer.poll(0)
    assert producer.flush(10) == 0


def wait_decision(controller: PromotionController, action: str, timeout: float = 20.0) -> Any:
    """Evaluate until the newest decision is ``action`` (holds come and go while metrics arrive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        controller.evaluate()
        if controller.decisions and controller.decisions[-1].action == action:
            return controller.decisions[-1]
        time.sleep(0.2)
    raise AssertionError(f"no {action}; decisions: {[(d.action, d.reason) for d in controller.decisions]}")


def test_controller_promotes_holds_and_rolls_back(settings: Settings) -> None:
    promotion = settings.promotion.model_copy(update={"hold_every_seconds": 0.1})
    settings = settings.model_copy(update={"promotion": promotion})
    policy = PromotionPolicy(margin=0.02, alpha=0.05, min_samples=50)
    with ResourceStore(settings, who="test") as store:
        for i in range(4):
            store.publish("prompt", template=f"v{i + 1} {{{{ticket}}}}")
        store.label("prompt", "production", 1)
        good = store.label("prompt", "candidate", 2)

        controller = PromotionController(settings, policy, store=store).open()
        try:
            # too little evidence: hold, and the labels stay
            send_metrics(settings, "prompt", 1, 20, 10, good.moved_at)
            send_metrics(settings, "prompt", 2, 20, 16, good.moved_at)
            # pinned evaluations (mode val) of both versions are not A/B traffic: they do not count
            send_metrics(settings, "prompt", 1, 500, 250, good.moved_at, mode="val")
            send_metrics(settings, "prompt", 2, 500, 500, good.moved_at, mode="val")
            hold = wait_decision(controller, "hold")
            assert hold.p_value is None and "at least 50" in hold.reason
            deadline = time.monotonic() + 20
            while len(controller.book) < 4 * 6 and time.monotonic() < deadline:  # 6 partials per send
                time.sleep(0.1)
            assert len(controller.book) == 4 * 6
            assert controller.book.stats("prompt", 2, good.moved_at) == ArmStats(20, 16)
            assert all(d.action == "hold" for d in controller.evaluate())
            assert store.labels("prompt") == {"production": 1, "candidate": 2}

            # earlier windows do not count: metrics before the candidate label are ignored
            send_metrics(settings, "prompt", 2, 500, 0, good.moved_at - 10 * WINDOW_US)
            # clearly better with enough samples: promote
            send_metrics(settings, "prompt", 1, 200, 100, good.moved_at + 1)
            send_metrics(settings, "prompt", 2, 200, 150, good.moved_at + 1)
            promote = wait_decision(controller, "promote")
            assert (promote.candidate_n, promote.candidate_successes) == (200, 150)
            assert (promote.production_n, promote.production_successes) == (200, 100)
            assert promote.test == TEST_NAME and promote.p_value is not None and promote.p_value < 0.05
            assert abs(promote.difference - 0.25) < 1e-9
            assert store.wait_for(lambda s: s.labels("prompt") == {"production": 2}, 10)
            moved = store.state("prompt").labels["production"]
            assert moved.decision_id == promote.decision_id and moved.previous_version == 1

            # a worse candidate against the new production: rollback, production untouched
            bad = store.label("prompt", "candidate", 3)
            send_metrics(settings, "prompt", 2, 200, 150, bad.moved_at + 1)
            send_metrics(settings, "prompt", 3, 200, 90, bad.moved_at + 1)
            rollback = wait_decision(controller, "rollback")
            assert rollback.candidate_version == 3 and rollback.production_version == 2
            assert store.wait_for(lambda s: s.labels("prompt") == {"production": 2}, 10)
        finally:
            controller.close()

    records = read_topic(settings, settings.topic("decisions"), expected=len(controller.decisions))
    assert [r["decision_id"] for r in records] == [d.decision_id for d in controller.decisions]
    assert [r["action"] for r in records if r["action"] != "hold"] == ["promote", "rollback"]
