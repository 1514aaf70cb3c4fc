"""Weight trainers against the real broker: triplets in, trained checkpoints out as resource versions.

Triplets are written to the triplet topic as the stream worker writes them (Avro, keyed by rollout
id); the tiny model (``tests/tinymodel.py``) trains a few steps per window on CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from agentstream.producers.client import AgentStream
from agentstream.producers.runner import Runner
from agentstream.resources.store import ResourceStore
from agentstream.schemas import AvroSerializer, ResourceVersion, Task, Triplet
from agentstream.settings import Settings
from agentstream.trainers.data import grpo_groups, task_key
from agentstream.trainers.rl import (
    DPOFromLogs,
    DPOFromLogsConfig,
    GRPOFromLogs,
    GRPOFromLogsConfig,
    KTOFromLogs,
    KTOFromLogsConfig,
)
from agentstream.trainers.runtime import TripletFilter, TripletStream
from agentstream.trainers.sft import StreamSFTConfig, StreamSFTTrainer
from tests.helpers import settings_env, wait_for

pytestmark = pytest.mark.integration

RESOURCE = "tiny-llm"
FAST = {"learning_rate": 5e-3, "per_device_train_batch_size": 8, "max_length": 64}


@pytest.fixture
def tsettings(settings: Settings) -> Settings:
    """The test's settings with quick group joins and checkpoints under its data dir."""
    trainer = settings.trainer.model_copy(update={"session_timeout_ms": 2_000})
    runner = settings.runner.model_copy(
        update={
            "group_id": f"runners-{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": 2_000,
            "lazy_start_seconds": 0.3,
            "heartbeat_seconds": 0.15,
            "shutdown_grace_seconds": 5.0,
            "resources": [RESOURCE],
        }
    )
    return settings.model_copy(update={"trainer": trainer, "runner": runner})


@pytest.fixture
def store(tsettings: Settings) -> Iterator[ResourceStore]:
    with ResourceStore(tsettings, who="test") as opened:
        yield opened


# ---- triplets ------------------------------------------------------------------------------------------
def triplet(
    question: str,
    answer: str,
    reward: float | None,
    *,
    version: int = 1,
    triplet_id: str | None = None,
    task_type: str = "math",
    mode: str = "train",
    rollout_id: str | None = None,
    **fields: Any,
) -> Triplet:
    now = time.time_ns() // 1_000
    rollout_id = rollout_id or f"ro-{uuid.uuid4().hex[:12]}"
    return Triplet(
        triplet_id=triplet_id or f"{rollout_id}:0",
        version=version,
        rollout_id=rollout_id,
        attempt_id=f"{rollout_id}#1",
        span_id=uuid.uuid4().hex[:16],
        prompt_messages=json.dumps([{"role": "user", "parts": [{"type": "text", "content": question}]}]),
        response=json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]),
        reward=reward,
        resource_name="math-prompt",
        resource_version="1",
        mode=mode,
        task_type=task_type,
        model="tiny",
        created_at=now,
        emitted_at=now,
        **fields,
    )


def produce(settings: Settings, triplets: list[Triplet]) -> None:
    serializer = AvroSerializer(Triplet.avro_schema())
    producer = Producer(settings.producer_config())
    for t in triplets:
        producer.produce(settings.topic("triplets"), serializer(t.to_avro()), t.rollout_id.encode())
    assert producer.flush(15) == 0


def arithmetic(n: int, offset: int = 0) -> list[Triplet]:
    """``n`` correct answers (reward 1.0) to distinct sums."""
    return [
        triplet(f"What is {i % 10} + {(i // 10) % 10}?", str(i % 10 + (i // 10) % 10), 1.0)
        for i in range(offset, offset + n)
    ]


def attempts(tasks: int, per_task: int = 4, tokenizer: Any = None) -> list[Triplet]:
    """Several attempts per task, half right (reward 1) and half wrong (reward 0).

    With a tokenizer, every other attempt carries the token ids and logprobs a server would return.
    """
    out = []
    for task in range(tasks):
        a, b = task % 10, (task * 3 + 1) % 10
        for attempt in range(per_task):
            right = attempt % 2 == 0
            answer = str(a + b) if right else str(a + b + 1 + attempt)
            fields: dict[str, Any] = {}
            if tokenizer is not None and attempt < 2:
                question = f"What is {a} + {b}?"
                prompt_ids = tokenizer.apply_chat_template(
                    [{"role": "user", "content": question}],
                    tokenize=True,
                    add_generation_prompt=True,
                    return_dict=True,
                )["input_ids"]
                response_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [
                    tokenizer.eos_token_id
                ]
                fields = {
                    "prompt_token_ids": list(prompt_ids),
                    "response_token_ids": response_ids,
                    "response_logprobs": [-0.5] * len(response_ids),
                }
            out.append(triplet(f"What is {a} + {b}?", answer, 1.0 if right else 0.0, **fields))
    return out


# ---- helpers -------------------------------------------------------------------------------------------
def model_delta(base: Path, trained: str) -> float:
    """L2 distance between the weights of two checkpoints."""
    import torch
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(base).state_dict()
    b = AutoModelForCausalLM.from_pretrained(trained).state_dict()
    assert a.keys() == b.keys()
    return sum(torch.linalg.vector_norm(a[k].float() - b[k].float()).item() for k in a)


def trainer_versions(store: ResourceStore, trainer: str) -> list[ResourceVersion]:
    if RESOURCE not in store.names():
        return []
    return [
        v for _, v in sorted(store.state(RESOURCE).versions.items()) if v.lineage.get("trainer") == trainer
    ]


def offsets(version: ResourceVersion) -> dict[int, tuple[int, int]]:
    return {int(p): tuple(r) for p, r in json.loads(version.lineage["window.offsets"]).items()}


def end_offsets(settings: Settings) -> dict[int, int]:
    """High watermarks of the triplet topic (from a fetch, as the broker's ListOffsets is unreliable)."""
    from agentstream.topics.io import high_watermarks

    topic = settings.topic("triplets")
    consumer = Consumer(settings.consumer_config(f"hw-{uuid.uuid4().hex[:6]}"))
    try:
        ends = high_watermarks(consumer, [(topic, p) for p in range(settings.partitions)])
    finally:
        consumer.close()
    return {p: end for (_, p), end in ends.items()}


def put_tasks(settings: Settings, tasks: list[Task]) -> None:
    serializer = AvroSerializer(Task.avro_schema())
    producer = Producer(settings.producer_config())
    for task in tasks:
        producer.produce(settings.topic("tasks"), serializer(task.to_avro()), task.rollout_id.encode())
    assert producer.flush(10) == 0


def make_task(value: Any) -> Task:
    return Task(
        rollout_id=f"ro-{uuid.uuid4().hex[:12]}",
        attempt_number=1,
        input=json.dumps(value),
        enqueued_at=time.time_ns() // 1_000,
    )


# ---- tests ---------------------------------------------------------------------------------------------
def test_triplet_stream_filters_and_keeps_the_newest_revision(tsettings: Settings) -> None:
    late = triplet("What is 1 + 1?", "2", None, triplet_id="late-1")
    revised = late.model_copy(update={"version": 2, "reward": 1.0})  # the late reward arrived
    lowered = triplet("What is 2 + 2?", "4", 1.0, triplet_id="low-1")
    lowered_v2 = lowered.model_copy(update={"version": 2, "reward": 0.0})  # and here it was revised down
    batch = [
        late,
        *arithmetic(3),
        triplet("x", "y", 1.0, task_type="other"),
        triplet("v", "w", 1.0, mode="val"),
        triplet("a", "b", 0.1),
        lowered,
        revised,
        lowered_v2,
        lowered,
        *arithmetic(6, offset=10),
    ]
    produce(tsettings, batch)
    stream = TripletStream(
        tsettings,
        f"t-{uuid.uuid4().hex[:6]}",
        TripletFilter(task_types=("math",), min_reward=0.5),
        window_count=100,
        window_seconds=2.0,
    )
    with stream:
        window = stream.next_window(timeout=30)
    assert window is not None and window.closed_by == "time"
    assert window.records == len(batch)
    by_id = {t.triplet_id: t for t in window.triplets}
    assert len(by_id) == len(window.triplets) == 10
    assert by_id["late-1"].version == 2 and "low-1" not in by_id  # the newest revision decides
    assert all(t.reward >= 0.5 and t.task_type == "math" and t.mode == "train" for t in window.triplets)


def test_count_windows_tile_the_offsets(tsettings: Settings) -> None:
    produce(tsettings, arithmetic(9))
    stream = TripletStream(tsettings, f"t-{uuid.uuid4().hex[:6]}", window_count=4)
    with stream:
        first = stream.next_window(timeout=30)
        second = stream.next_window(timeout=30)
        assert first is not None and second is not None
        stream.commit(first)
        stream.commit(second)
        assert stream.next_window(timeout=2) is None and stream.filling == 1
    assert first.closed_by == second.closed_by == "count"
    assert len(first.triplets) == len(second.triplets) == 4
    assert not {t.triplet_id for t in first.triplets} & {t.triplet_id for t in second.triplets}
    # the second window starts where the first ended, partition by partition
    for partition, (start, end) in second.ranges.items():
        assert start == first.ranges.get(partition, (0, 0))[1] and start < end
    assert first.window_id != second.window_id
    assert sum(e - s for s, e in [*first.ranges.values(), *second.ranges.values()]) == 8


def test_sft_publishes_a_candidate_that_a_running_runner_picks_up(
    tsettings: Settings, store: ResourceStore, tiny_model: Path
) -> None:
    # the resource starts at the base model; the runner sends every task to the candidate label
    store.publish(
        RESOURCE,
        uri=str(tiny_model),
        kind="llm",
        config={"base_model": str(tiny_model)},
        labels=["production", "candidate"],
    )
    seen: dict[str, tuple[int, str, str]] = {}
    lock = threading.Lock()

    def agent(task: dict, rollout: Any) -> float:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        llm = rollout.resource(RESOURCE)
        tokenizer = AutoTokenizer.from_pretrained(llm.uri)
        model = AutoModelForCausalLM.from_pretrained(llm.uri)
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": task["q"]}],
            tokenize=True,
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
        )
        output = model.generate(**prompt, max_new_tokens=3, do_sample=False)
        answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
        with lock:
            seen[task["id"]] = (llm.version, llm.uri, answer)
        return 1.0

    sdk = AgentStream(tsettings)
    runner = Runner(agent, tsettings, client=sdk, concurrency=1, traffic={"candidate": 1.0})
    try:
        runner.start()
        put_tasks(tsettings, [make_task({"id": "before", "q": "What is 2 + 3?"})])
        assert wait_for(lambda: "before" in seen, 60)
        assert seen["before"][:2] == (1, str(tiny_model))

        produce(tsettings, [*arithmetic(24), triplet("What is 9 + 9?", "0", 0.0), triplet("bad", "x", None)])
        config = StreamSFTConfig(
            resource_name=RESOURCE,
            base_model=str(tiny_model),
            window_count=24,
            max_steps=12,
            task_types=("math",),
            **FAST,
        )
        trainer = StreamSFTTrainer(config, tsettings, store=store)
        [outcome] = trainer.run(once=True, show_progress=False)
        version = outcome.version
        assert outcome.status == "published" and version is not None
        lineage = version.lineage
        assert float(lineage["metrics.train_loss_last"]) < float(lineage["metrics.train_loss_first"])
        assert lineage["trainer"] == "sft-tiny-llm" and lineage["trainer.algorithm"] == "sft"
        assert lineage["base_model"] == str(tiny_model) == version.config["base_model"]
        assert lineage["window.count"] == "24" and int(lineage["window.records"]) >= 24
        assert lineage["window.id"] == outcome.window.window_id
        assert sum(end - start for start, end in offsets(version).values()) == int(lineage["window.records"])
        assert lineage["metrics.steps"] == "12" and version.config["adapter"] == "false"
        assert version.uri == str(tsettings.data_dir / "checkpoints" / RESOURCE / f"v{version.version}")
        assert store.labels(RESOURCE) == {"production": 1, "candidate": version.version}
        assert model_delta(tiny_model, version.uri) > 0.1

        # the same runner, no restart: its next attempt resolves the new checkpoint and generates with it
        put_tasks(tsettings, [make_task({"id": "after", "q": "What is 2 + 3?"})])
        assert wait_for(lambda: "after" in seen, 60)
        assert seen["after"][:2] == (version.version, version.uri)
    finally:
        runner.stop()
        sdk.close()


def test_sft_with_lora_publishes_an_adapter(
    tsettings: Settings, store: ResourceStore, tiny_model: Path
) -> None:
    produce(tsettings, arithmetic(8))
    config = StreamSFTConfig(
        resource_name=RESOURCE,
        base_model=str(tiny_model),
        window_count=8,
        max_steps=3,
        lora_r=4,
        format="text",
        **FAST,
    )
    [outcome] = StreamSFTTrainer(config, tsettings, store=store).run(once=True, show_progress=False)
    version = outcome.version
    assert version is not None and version.config["adapter"] == "true"
    assert (Path(version.uri) / "adapter_config.json").exists()
    assert not (Path(version.uri) / "model.safetensors").exists()
    # continuing from the adapter version loads it trainable on its base and publishes a child
    produce(tsettings, arithmetic(8, offset=40))
    config.init_from = str(version.version)
    [child] = StreamSFTTrainer(config, tsettings, store=store).run(once=True, show_progress=False)
    assert child.version is not None and child.version.parent_version == version.version
    assert (
        child.version.config["base_model"] == str(tiny_model)
        and child.version.lineage["init_from"] == version.uri
    )


def test_kto_dpo_and_grpo_from_logs_train_and_publish(
    tsettings: Settings, store: ResourceStore, tiny_model: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    logged = attempts(tasks=6, per_task=4, tokenizer=tokenizer)
    assert len(grpo_groups(logged, 4)) == 6 and len({task_key(t) for t in logged}) == 6
    produce(tsettings, logged)
    common = {
        "resource_name": RESOURCE,
        "base_model": str(tiny_model),
        "window_count": len(logged),
        "max_steps": 3,
        **FAST,
    }
    trainers = [
        KTOFromLogs(KTOFromLogsConfig(threshold=0.5, **common), tsettings, store=store),
        DPOFromLogs(DPOFromLogsConfig(**common), tsettings, store=store),
        GRPOFromLogs(GRPOFromLogsConfig(num_generations=4, **common), tsettings, store=store),
    ]
    published = {}
    for trainer in trainers:
        [outcome] = trainer.run(once=True, show_progress=False)
        assert outcome.status == "published", (trainer.algorithm, outcome.status)
        published[trainer.algorithm] = outcome.version
    for algorithm, version in published.items():
        assert version is not None
        assert version.lineage["trainer.algorithm"] == algorithm and version.config["algorithm"] == algorithm
        assert version.lineage["window.count"] == str(len(logged))
        assert model_delta(tiny_model, version.uri) > 0.01, algorithm
    kto, dpo, grpo = published["kto"], published["dpo"], published["grpo"]
    assert (kto.lineage["metrics.desirable"], kto.lineage["metrics.undesirable"]) == ("12", "12")
    assert dpo.lineage["metrics.pairs"] == "6"
    assert grpo.lineage["metrics.groups"] == "6"
    # half the attempts carried server token ids (and logprobs) that match this tokenizer: replayed as logged
    replayed = int(grpo.lineage["metrics.replayed"])
    assert replayed >= 8 and 0 < int(grpo.lineage["metrics.replayed_logged_tokens"]) < replayed
    assert store.labels(RESOURCE)["candidate"] == grpo.version


def test_a_lost_commit_neither_retrains_nor_skips(
    tsettings: Settings, store: ResourceStore, tiny_model: Path
) -> None:
    """Publish succeeded, commit lost: the restarted trainer resumes where the published window ended."""
    produce(tsettings, arithmetic(16))
    config = StreamSFTConfig(
        resource_name=RESOURCE, base_model=str(tiny_model), window_count=8, max_steps=1, **FAST
    )
    [first] = StreamSFTTrainer(config, tsettings, store=store).run(once=True, show_progress=False)
    assert first.version is not None
    # the group's committed offsets go back to the beginning, as if the commit had never happened
    group = f"{tsettings.trainer.group_id_prefix}sft-{RESOURCE}"
    rewinder = Consumer(tsettings.consumer_config(group))
    topic = tsettings.topic("triplets")
    rewinder.commit(
        offsets=[TopicPartition(topic, p, 0) for p in range(tsettings.partitions)], asynchronous=False
    )
    committed = {
        tp.partition: tp.offset
        for tp in rewinder.committed(
            [TopicPartition(topic, p) for p in range(tsettings.partitions)], timeout=10
        )
    }
    rewinder.close()
    assert set(committed.values()) == {0}

    [second] = StreamSFTTrainer(config, tsettings, store=store).run(once=True, show_progress=False)
    assert second.version is not None and second.status == "published"
    versions = trainer_versions(store, f"sft-{RESOURCE}")
    assert [v.version for v in versions] == [first.version.version, second.version.version]
    assert_tiles(tsettings, versions, total=16)


def assert_tiles(settings: Settings, versions: list[ResourceVersion], total: int) -> None:
    """The windows of ``versions`` are disjoint, in order, and together cover every offset of the topic."""
    ids = [v.lineage["window.id"] for v in versions]
    assert len(set(ids)) == len(ids)
    covered: dict[int, list[tuple[int, int]]] = {}
    for v in versions:
        for partition, window in offsets(v).items():
            covered.setdefault(partition, []).append(window)
    ends = end_offsets(settings)
    for partition, end in ends.items():
        windows = covered.get(partition, [])
        position = 0
        for start, stop in windows:
            assert start == position, (partition, windows)
            position = stop
        assert position == end, (partition, windows, end)
    assert sum(int(v.lineage["window.count"]) for v in versions) == total == sum(ends.values())


def test_killed_trainer_resumes_from_its_checkpointed_offsets(
    tsettings: Settings, store: ResourceStore, tiny_model: Path, tmp_path: Path
) -> None:
    window = 8
    produce(tsettings, arithmetic(window + window // 2))  # one full window, and half of the next
    command = [
        sys.executable,
        "-m",
        "agentstream.cli",
        "train",
        "sft",
        "--resource",
        RESOURCE,
        "--base-model",
        str(tiny_model),
        "--window-count",
        str(window),
        "--max-steps",
        "2",
        "--lr",
        "5e-3",
        "--max-length",
        "64",
    ]
    log = tmp_path / "trainer.log"
    with open(log, "ab") as out:
        child = subprocess.Popen(command, env=settings_env(tsettings), stdout=out, stderr=subprocess.STDOUT)
    try:
        assert store.wait_for(lambda s: len(trainer_versions(s, f"sft-{RESOURCE}")) >= 1, timeout=120), (
            log.read_text()[-3000:]
        )
        time.sleep(1.0)  # inside window 2 (half full): nothing to publish
        child.kill()  # SIGKILL: no clean shutdown, no leave-group
        child.wait(10)
        produce(tsettings, arithmetic(window // 2, offset=50))

        with open(log, "ab") as out:
            again = subprocess.run(
                [*command, "--once"],
                env=settings_env(tsettings),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=180,
            )
        assert again.returncode == 0, log.read_text()[-3000:]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert store.wait_for(lambda s: len(trainer_versions(s, f"sft-{RESOURCE}")) >= 2, timeout=15)
    versions = trainer_versions(store, f"sft-{RESOURCE}")
    assert len(versions) == 2, [v.lineage for v in versions]
    assert_tiles(tsettings, versions, total=2 * window)
