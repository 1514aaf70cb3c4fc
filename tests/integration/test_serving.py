"""Serving new weights without restarts, token ids and logprobs from server to triplet, online GRPO on CPU.

Everything is real: the embedded broker, a stream worker and a sink process, the CPU model server
over a tiny causal LM built offline (``tests/tinymodel.py``), a runner, trl's GRPOTrainer. The one
stand-in is the vLLM server of the adapter-sync contract test: a small Starlette app implementing
vLLM's two dynamic-LoRA endpoints (vLLM itself needs a GPU).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import agentstream
from agentstream.clickhouse.connect import connect
from agentstream.process.http import BackgroundServer
from agentstream.process.ports import listening_socket
from agentstream.producers.client import AgentStream
from agentstream.producers.runner import Runner
from agentstream.producers.tracer import Rollout
from agentstream.resources.store import ResourceStore
from agentstream.schemas import Task
from agentstream.serving.model_server import ModelServer
from agentstream.serving.vllm import VLLMAdapterSync, VLLMServer
from agentstream.settings import Settings
from agentstream.topics.catalogue import TASKS
from agentstream.topics.io import RecordWriter
from agentstream.trainers.checkpoint import publish_checkpoint
from agentstream.trainers.grpo import OnlineGRPOConfig, OnlineGRPOTrainer
from tests.helpers import SinkProcess, WorkerProcess, latest_by, read_topic, wait_for

pytestmark = pytest.mark.integration

RESOURCE = "tiny-llm"
PROMPT = "Q: What is 2 + 3? A:"


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "runner": settings.runner.model_copy(
                update={"group_id": f"r-{uuid.uuid4().hex[:6]}", "session_timeout_ms": 2_000}
            ),
            "streams": settings.streams.model_copy(
                update={
                    "session_timeout_ms": 2_000,
                    "heartbeat_interval_ms": 400,
                    "timer_interval_seconds": 0.1,
                }
            ),
            "sink": settings.sink.model_copy(update={"session_timeout_ms": 2_000}),
        }
    )


@pytest.fixture
def store(fast: Settings) -> Iterator[ResourceStore]:
    with ResourceStore(fast, who="test") as running:
        yield running


def make_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter of the tiny model with non-zero weights: it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(
            r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
        ),
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


class CheckpointAgent:
    """Calls the model server with the exact version its rollout resolved, asking for logprobs and ids."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
        agentstream.instrument_openai(self.client)
        self.answers: dict[str, tuple[int, Any]] = {}

    def __call__(self, task: dict[str, Any], rollout: Rollout) -> None:
        version = rollout.resource(RESOURCE).version
        completion = self.client.completions.create(
            model=f"{RESOURCE}:v{version}",
            prompt=task["prompt"],
            max_tokens=6,
            temperature=0,
            logprobs=0,
            extra_body={"return_token_ids": True},
        )
        self.answers[rollout.rollout_id] = (version, completion)
        rollout.emit_reward(1.0 if any(ch.isdigit() for ch in completion.choices[0].text) else 0.0)


def test_a_running_runner_switches_to_a_new_checkpoint_and_logprobs_reach_the_triplets(
    fast: Settings, store: ResourceStore, tiny_model: Path, tmp_path: Path
) -> None:
    worker = WorkerProcess(fast).start()
    sink = SinkProcess(fast).start()
    client = AgentStream(fast)
    v1 = store.publish(
        RESOURCE,
        uri=str(tiny_model),
        kind="model_checkpoint",
        config={"base_model": str(tiny_model), "adapter": "false"},
        labels=["production"],
    )
    server = ModelServer(fast, [RESOURCE], store=store, port=0).start()
    agent = CheckpointAgent(server.base_url, server.token)
    runner = Runner(agent, fast, client=client, concurrency=1, resources=store)
    try:
        worker.wait_ready()
        runner.start()
        [first] = client.enqueue({"prompt": PROMPT})
        assert wait_for(lambda: first in agent.answers, 60), runner.stats

        # a trained LoRA adapter is published and promoted while runner and server keep running
        adapter = make_adapter(tiny_model, tmp_path / "v2")
        v2 = publish_checkpoint(
            store,
            RESOURCE,
            adapter,
            base_model=str(tiny_model),
            adapter=True,
            lineage={"trainer": "test"},
            parent_version=v1.version,
            label=None,
        )
        store.label(RESOURCE, "production", v2.version, reason="test promotion")
        [second] = client.enqueue({"prompt": PROMPT})
        assert wait_for(lambda: second in agent.answers, 60), runner.stats
        assert client.flush(10)
        served_by = {
            rollout: (version, completion.model) for rollout, (version, completion) in agent.answers.items()
        }
        assert served_by == {first: (1, f"{RESOURCE}:v1"), second: (2, f"{RESOURCE}:v2")}
        assert server.service.cache.loads == 2  # v1 then v2, in the one server process
        # "NAME" follows the production label: now v2
        latest = agent.client.completions.create(model=RESOURCE, prompt=PROMPT, max_tokens=2, temperature=0)
        assert latest.model == f"{RESOURCE}:v2"
    finally:
        runner.stop()
        server.stop()

    try:
        answers = {rollout: completion.choices[0] for rollout, (_, completion) in agent.answers.items()}
        for choice in answers.values():
            assert len(choice.token_ids) == len(choice.logprobs.token_logprobs) > 0
            assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
        # the adapter changed the model: the same prompt and tokens are scored differently
        assert answers[first].logprobs.token_logprobs != answers[second].logprobs.token_logprobs

        # every attempt ran on the same runner
        states = latest_by(read_topic(fast, fast.topic("rollout-state"), timeout=5), "rollout_id", "version")
        workers = {a["worker_id"] for r in (first, second) for a in states[r]["attempts"]}
        assert workers == {runner.worker_id}

        # span and triplet carry the server's token ids and logprobs
        spans = [s for s in read_topic(fast, fast.topic("spans"), timeout=5) if s["kind"] == "llm"]
        by_rollout = {s["rollout_id"]: s for s in spans}
        triplets = wait_for(lambda: _triplets(fast, {first, second}), 60)
        assert triplets, worker.log.read_text()[-3000:]
        for rollout, choice in answers.items():
            span, triplet = by_rollout[rollout], triplets[rollout]
            assert span["response_token_ids"] == triplet["response_token_ids"] == choice.token_ids
            assert span["prompt_token_ids"] == triplet["prompt_token_ids"] == choice.prompt_token_ids
            _close(span["response_logprobs"], choice.logprobs.token_logprobs)
            _close(triplet["response_logprobs"], choice.logprobs.token_logprobs)
            assert triplet["resource_version"] == str(agent.answers[rollout][0])

        # ... and so do the ClickHouse tables (migration 0005)
        ch = connect(fast)
        rows = wait_for(
            lambda: (
                ch.query(
                    "SELECT rollout_id, response_logprobs FROM triplets FINAL WHERE rollout_id IN {ids:Array(String)}",
                    parameters={"ids": [first, second]},
                ).result_rows
                if _landed(ch, first, second)
                else None
            ),
            60,
        )
        assert rows and len(rows) == 2
        for rollout, logprobs in rows:
            _close(logprobs, answers[rollout].logprobs.token_logprobs)
        [[span_logprobs]] = ch.query(
            "SELECT response_logprobs FROM spans WHERE kind = 'llm' AND rollout_id = {r:String}",
            parameters={"r": first},
        ).result_rows
        _close(span_logprobs, answers[first].logprobs.token_logprobs)
    finally:
        client.close()
        worker.stop()
        sink.stop()


def _triplets(settings: Settings, rollouts: set[str]) -> dict[str, dict[str, Any]] | None:
    found = {
        t["rollout_id"]: t
        for t in latest_by(
            read_topic(settings, settings.topic("triplets"), timeout=2), "triplet_id", "version"
        ).values()
        if t["rollout_id"] in rollouts and t["reward"] is not None
    }
    return found if set(found) == rollouts else None


def _landed(ch: Any, *rollouts: str) -> bool:
    count = ch.query(
        "SELECT count() FROM triplets FINAL WHERE rollout_id IN {ids:Array(String)}",
        parameters={"ids": list(rollouts)},
    ).result_rows[0][0]
    return count == len(rollouts)


def _close(got: list[float], expected: list[float]) -> None:
    # float32 on the wire
    assert len(got) == len(expected)
    assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5) for a, b in zip(got, expected)), (got, expected)


def test_capture_records_ids_and_logprobs_of_chat_and_streamed_calls(
    fast: Settings, store: ResourceStore, tiny_model: Path
) -> None:
    store.publish(RESOURCE, uri=str(tiny_model), kind="model_checkpoint", labels=["production"])
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    ids = {"return_token_ids": True}
    with AgentStream(fast) as client, ModelServer(fast, [RESOURCE], store=store, port=0) as server:
        llm = openai.OpenAI(base_url=server.base_url, api_key=server.token, max_retries=0)
        agentstream.instrument_openai(llm)
        with client.rollout({"q": 1}) as rollout:
            chat = llm.chat.completions.create(
                model=RESOURCE,
                messages=messages,
                max_tokens=5,
                temperature=0,
                logprobs=True,
                top_logprobs=2,
                extra_body=ids,
            )
            chat_chunks = list(
                llm.chat.completions.create(
                    model=RESOURCE,
                    messages=messages,
                    max_tokens=5,
                    temperature=0,
                    logprobs=True,
                    stream=True,
                    extra_body=ids,
                )
            )
            text_chunks = list(
                llm.completions.create(
                    model=f"{RESOURCE}:v1",
                    prompt=PROMPT,
                    max_tokens=5,
                    temperature=0,
                    logprobs=0,
                    stream=True,
                    extra_body=ids,
                )
            )
        assert client.flush(10)
    spans = sorted(
        (
            s
            for s in read_topic(fast, fast.topic("spans"), timeout=5)
            if s["kind"] == "llm" and s["rollout_id"] == rollout.rollout_id
        ),
        key=lambda s: s["sequence_id"],
    )
    assert [s["name"] for s in spans] == [
        f"chat {RESOURCE}",
        f"chat {RESOURCE}",
        f"text_completion {RESOURCE}:v1",
    ]

    answer = chat.choices[0]
    assert chat.model == f"{RESOURCE}:v1" and len(answer.logprobs.content[0].top_logprobs) == 2
    assert spans[0]["prompt_token_ids"] == chat.prompt_token_ids
    assert spans[0]["response_token_ids"] == answer.token_ids
    _close(spans[0]["response_logprobs"], [t.logprob for t in answer.logprobs.content])

    # greedy: the streamed chat is the same answer, put together from its chunks
    streamed = [c.choices[0] for c in chat_chunks if c.choices and c.choices[0].logprobs is not None]
    assert [t for c in streamed for t in c.token_ids] == answer.token_ids == spans[1]["response_token_ids"]
    _close(spans[1]["response_logprobs"], [t.logprob for t in answer.logprobs.content])

    text = [c.choices[0] for c in text_chunks if c.choices and c.choices[0].logprobs is not None]
    assert spans[2]["prompt_token_ids"] == text[0].prompt_token_ids
    assert spans[2]["response_token_ids"] == [t for c in text for t in c.token_ids]
    _close(spans[2]["response_logprobs"], [lp for c in text for lp in c.logprobs.token_logprobs])


# ---- online GRPO ---------------------------------------------------------------------------------------
def digit_share(completion: str, answer: str, **_: Any) -> float:
    """A toy reward with spread even for an untrained model: the share of digits in the answer."""
    seen.append(answer)
    return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)


seen: list[str] = []


def test_online_grpo_on_cpu_trains_and_publishes_a_candidate(
    fast: Settings, store: ResourceStore, tiny_model: Path, tmp_path: Path
) -> None:
    v1 = store.publish(
        RESOURCE,
        uri=str(tiny_model),
        kind="model_checkpoint",
        config={"base_model": str(tiny_model), "adapter": "false"},
        labels=["production"],
    )
    # the tasks topic, as the lifecycle processor writes it (attempt 2 is a retry of the same rollout)
    writer = RecordWriter(fast)
    try:
        for i, (a, b) in enumerate([(1, 2), (2, 3), (3, 4), (4, 4)]):
            for attempt in (1, 2) if i == 0 else (1,):
                task = Task(
                    rollout_id=f"ro-{i}",
                    attempt_number=attempt,
                    mode="train",
                    enqueued_at=1_000 + i,
                    input=json.dumps({"prompt": f"Q: What is {a} + {b}? A:", "answer": str(a + b)}),
                )
                writer.write(TASKS, task.rollout_id, task)
        held_out = Task(
            rollout_id="ro-val",
            attempt_number=1,
            mode="val",
            enqueued_at=2_000,
            input=json.dumps({"prompt": "Q: What is 9 + 9? A:", "answer": "18"}),
        )
        writer.write(TASKS, held_out.rollout_id, held_out)
    finally:
        writer.close()

    logs: list[dict[str, Any]] = []
    seen.clear()
    config = OnlineGRPOConfig(
        resource_name=RESOURCE,
        reward=digit_share,
        init_from="production",
        max_steps=4,
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=8,
        learning_rate=5e-3,
        output_dir=tmp_path / "ckpt",
    )
    trainer = OnlineGRPOTrainer(config, fast, store=store, on_log=logs.append)
    result = trainer.train()

    assert result.generation == "transformers" and result.prompts == 4 and result.steps == 4
    assert len(result.rewards) == 4 and len(result.losses) == 4 and len(logs) >= 4
    assert all(0.0 <= r <= 1.0 for r in result.rewards)
    assert set(seen) <= {"3", "5", "7", "8"} and seen  # the task's fields reach the reward; val tasks do not
    version = result.version
    assert version is not None and version.version == v1.version + 1 and version.parent_version == v1.version
    assert store.labels(RESOURCE)["candidate"] == version.version
    assert store.labels(RESOURCE)["production"] == v1.version
    lineage = version.lineage
    assert lineage["trainer.algorithm"] == "grpo-online" and lineage["init_from"] == f"{RESOURCE}:v1"
    assert lineage["prompts.source"] == "tasks" and lineage["prompts.count"] == "4"
    assert lineage["metrics.steps"] == "4" and lineage["generation"] == "transformers"
    assert lineage["reward"].endswith("digit_share")
    assert version.uri == str(result.checkpoint) and version.config["adapter"] == "false"

    # the weights moved, and the candidate is servable right away by name
    assert _max_weight_change(tiny_model, Path(version.uri)) > 0
    with ModelServer(fast, [RESOURCE], store=store, port=0) as server:
        answer = openai.OpenAI(base_url=server.base_url, api_key=server.token).completions.create(
            model=f"{RESOURCE}@candidate", prompt=PROMPT, max_tokens=3, temperature=0
        )
    assert answer.model == f"{RESOURCE}:v{version.version}"


def test_grpo_prompts_from_recent_triplets(clickhouse: Any) -> None:
    from datetime import UTC, datetime

    from agentstream.sinks.migrations import migrate
    from agentstream.trainers.grpo import prompts_from_triplets

    migrate(clickhouse)
    at, later = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)

    def messages(text: str) -> str:
        return json.dumps([{"role": "user", "parts": [{"type": "text", "content": text}]}])

    columns = [
        "triplet_id",
        "version",
        "rollout_id",
        "span_id",
        "prompt_messages",
        "response",
        "resource_name",
        "mode",
        "task_type",
        "created_at",
        "emitted_at",
    ]
    clickhouse.insert(
        "triplets",
        [
            ("t1", 1, "r1", "s1", messages("Q: 1 + 2?"), "[]", RESOURCE, "train", "math", at, at),
            (
                "t1",
                2,
                "r1",
                "s1",
                messages("Q: 1 + 2?"),
                "[]",
                RESOURCE,
                "train",
                "math",
                at,
                at,
            ),  # a re-emission
            (
                "t2",
                1,
                "r2",
                "s2",
                messages("Q: 1 + 2?"),
                "[]",
                RESOURCE,
                "train",
                "math",
                at,
                at,
            ),  # the same prompt
            ("t3", 1, "r3", "s3", messages("Q: 2 + 2?"), "[]", RESOURCE, "train", "math", later, later),
            ("t4", 1, "r4", "s4", messages("Q: 9 + 9?"), "[]", RESOURCE, "val", "math", at, at),  # held out
            ("t5", 1, "r5", "s5", messages("Q: 3 + 3?"), "[]", "other", "train", "math", at, at),
        ],
        column_names=columns,
    )
    clickhouse.insert(
        "rollout_states",
        [
            ("r3", 1, json.dumps({"q": "2 + 2", "answer": "3"}), at, at),
            ("r3", 2, json.dumps({"q": "2 + 2", "answer": "4"}), at, at),  # the newest state wins
        ],
        column_names=["rollout_id", "version", "input", "created_at", "updated_at"],
    )

    judge_row = ["t6", 2, "r6", "s6", messages("Q: judge?"), "[]", RESOURCE, "train", "math", later, later]
    # a retracted triplet (a judge call's): no policy prompt
    clickhouse.insert("triplets", [[*judge_row, True]], column_names=[*columns, "retracted"])

    rows = prompts_from_triplets(clickhouse, resource_name=RESOURCE, modes=("train",))
    by_prompt = {row["prompt"][0]["content"]: row for row in rows}
    assert list(by_prompt) == ["Q: 2 + 2?", "Q: 1 + 2?"]  # newest first, each prompt once
    assert by_prompt["Q: 2 + 2?"]["answer"] == "4" and by_prompt["Q: 2 + 2?"]["rollout_id"] == "r3"
    assert by_prompt["Q: 1 + 2?"]["task"] == "null"  # no rollout state: no task fields
    assert prompts_from_triplets(clickhouse, resource_name=RESOURCE, modes=("train",), limit=1) == rows[:1]


def _max_weight_change(before: Path, after: Path) -> float:
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(before).state_dict()
    b = AutoModelForCausalLM.from_pretrained(after).state_dict()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ---- the vLLM adapter sync, against vLLM's HTTP contract -----------------------------------------------
class FakeVLLM:
    """vLLM's dynamic-LoRA endpoints as vLLM answers them (a contract stand-in: vLLM needs a GPU)."""

    def __init__(self) -> None:
        self.adapters: dict[str, str] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def app(self) -> Starlette:
        async def load(request: Request) -> Response:
            body = await request.json()
            self.calls.append(("load", body))
            name, path = body.get("lora_name"), body.get("lora_path")
            if not name or not path:
                return _error("Both 'lora_name' and 'lora_path' must be provided.", 400)
            if name in self.adapters and not body.get("load_inplace"):
                return _error(f"The lora adapter '{name}' has already been loaded.", 400)
            if not Path(path, "adapter_config.json").is_file():
                return _error(f"No adapter found for {path}", 404)
            self.adapters[name] = path
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        async def unload(request: Request) -> Response:
            body = await request.json()
            self.calls.append(("unload", body))
            if self.adapters.pop(body.get("lora_name"), None) is None:
                return _error(f"The lora adapter '{body.get('lora_name')}' cannot be found.", 404)
            return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")

        async def models(request: Request) -> Response:
            return JSONResponse(
                {"object": "list", "data": [{"id": n, "root": p} for n, p in self.adapters.items()]}
            )

        return Starlette(
            routes=[
                Route("/v1/load_lora_adapter", load, methods=["POST"]),
                Route("/v1/unload_lora_adapter", unload, methods=["POST"]),
                Route("/v1/models", models),
            ]
        )


def _error(message: str, code: int) -> Response:
    return JSONResponse(
        {"object": "error", "message": message, "type": "BadRequestError", "code": code}, status_code=code
    )


@pytest.fixture
def fake_vllm() -> Iterator[tuple[FakeVLLM, str]]:
    fake = FakeVLLM()
    sock = listening_socket("127.0.0.1", 0)
    server = BackgroundServer(fake.app(), sock, name="fake vLLM", lifespan="off").start(timeout=10)
    yield fake, f"http://127.0.0.1:{server.port}/v1"
    server.stop(5)


def test_vllm_adapter_sync_contract(
    fast: Settings, store: ResourceStore, fake_vllm: tuple[FakeVLLM, str], tmp_path: Path
) -> None:
    fake, base_url = fake_vllm

    def adapter(name: str) -> str:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
        return str(folder)

    def publish(name: str, **kwargs: Any) -> int:
        return store.publish(
            RESOURCE,
            uri=adapter(name),
            kind="model_checkpoint",
            force_new=True,
            config={"base_model": "/models/base", "adapter": "true"},
            **kwargs,
        ).version

    v1 = publish("a1", labels=["production"])
    with VLLMAdapterSync(store, RESOURCE, base_url, keep=2) as sync:
        expected = {f"{RESOURCE}:v1": "a1", f"{RESOURCE}@production": "a1", RESOURCE: "a1"}
        assert wait_for(lambda: _served(fake) == expected, 10), (_served(fake), sync.errors)

        v2 = publish("a2", labels=["candidate"], parent_version=v1)
        expected = {**expected, f"{RESOURCE}:v2": "a2", f"{RESOURCE}@candidate": "a2"}
        assert wait_for(lambda: _served(fake) == expected, 10), (_served(fake), sync.errors)

        # promotion: the aliases are re-pointed in place (never missing), the versions stay
        loads_before = len(fake.calls)
        store.label(RESOURCE, "production", v2)
        expected = {**expected, f"{RESOURCE}@production": "a2", RESOURCE: "a2"}
        assert wait_for(lambda: _served(fake) == expected, 10), (_served(fake), sync.errors)
        moved = [body for kind, body in fake.calls[loads_before:]]
        assert all(body.get("load_inplace") for body in moved) and {b["lora_name"] for b in moved} == {
            RESOURCE,
            f"{RESOURCE}@production",
        }

        # only the newest two unlabelled versions stay loaded; a broken version is reported, not fatal
        store.label(RESOURCE, "candidate", None)
        publish("a3")
        broken = store.publish(
            RESOURCE, uri=str(tmp_path), kind="model_checkpoint", force_new=True, config={"adapter": "true"}
        ).version  # no adapter_config.json: a full folder
        assert broken == 4
        expected = {
            f"{RESOURCE}:v2": "a2",
            f"{RESOURCE}:v3": "a3",
            f"{RESOURCE}@production": "a2",
            RESOURCE: "a2",
        }
        assert wait_for(lambda: _served(fake) == expected, 10), (_served(fake), sync.errors)
        assert sync.errors == []  # v4 is no adapter and labelled nowhere: nothing to do for it


def _served(fake: FakeVLLM) -> dict[str, str]:
    return {name: Path(path).name for name, path in fake.adapters.items()}


class RestartRecorder(VLLMServer):
    """Process management stood in for (vLLM needs a GPU): a restart is recorded, and the fake server
    forgets its adapters as a new vLLM process would."""

    def __init__(self, fake: FakeVLLM, model: str) -> None:
        super().__init__(model, served_names=["base"])
        self.fake = fake
        self.restarts: list[tuple[str, list[str]]] = []

    def restart(self, model: str | Path, served_names: Any, timeout: float = 0) -> RestartRecorder:
        self.model, self.served_names = str(model), list(served_names)
        self.restarts.append((self.model, self.served_names))
        self.fake.adapters.clear()
        return self


def test_vllm_sync_restarts_the_server_on_a_promoted_full_checkpoint(
    fast: Settings, store: ResourceStore, fake_vllm: tuple[FakeVLLM, str], tmp_path: Path
) -> None:
    fake, base_url = fake_vllm
    base, full = tmp_path / "base", tmp_path / "full"
    for folder in (base, full):
        folder.mkdir()
        (folder / "config.json").write_text("{}")

    def adapter(name: str, on: Path) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(on)}))
        return folder

    def publish(uri: Path, **kwargs: Any) -> int:
        return store.publish(
            RESOURCE, uri=str(uri), kind="model_checkpoint", force_new=True, **kwargs
        ).version

    publish(base, labels=["production"])
    v2 = publish(adapter("on-base", base), labels=["candidate"])
    server = RestartRecorder(fake, str(base))
    with VLLMAdapterSync(store, RESOURCE, base_url, server=server) as sync:
        expected = {f"{RESOURCE}:v2": "on-base", f"{RESOURCE}@candidate": "on-base"}
        assert wait_for(lambda: _served(fake) == expected, 10), (_served(fake), sync.errors)
        assert server.restarts == []  # production is the checkpoint it already serves

        v3 = publish(full)
        v4 = publish(adapter("on-full", full))
        assert _served(fake) == expected  # an adapter of another base is never loaded
        store.label(RESOURCE, "production", v3)
        store.label(RESOURCE, "candidate", v4)
        expected = {f"{RESOURCE}:v4": "on-full", f"{RESOURCE}@candidate": "on-full"}
        assert wait_for(lambda: _served(fake) == expected, 10), (_served(fake), sync.errors)
        assert server.restarts == [(str(full), [f"{RESOURCE}:v{v3}", RESOURCE, f"{RESOURCE}@production"])]
        assert f"{RESOURCE}:v{v2}" not in sync.loaded
