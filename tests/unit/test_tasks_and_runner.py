"""Task preparation, JSONL task files, and the runner's pieces that need no broker."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from agentstream.producers.agent_calls import is_async_agent, wants_rollout
from agentstream.producers.task_offsets import PartitionOffsets
from agentstream.producers.tasks import TaskFileError, TaskSpec, prepare_tasks, read_task_file
from agentstream.producers.tracer import Emitter, Rollout
from agentstream.schemas import AttemptStatus, CreditAssignment, RolloutConfig
from tests.helpers import RecordingEmitter


# ---- enqueue: validation ------------------------------------------------------------------------------
def test_one_task_or_many() -> None:
    (one,) = prepare_tasks({"q": 1})
    assert json.loads(one.input_json) == {"q": 1} and one.rollout_id.startswith("ro-")
    assert [json.loads(t.input_json) for t in prepare_tasks(["a", "b"])] == ["a", "b"]
    assert [json.loads(t.input_json) for t in prepare_tasks(x for x in (1, 2, 3))] == [1, 2, 3]
    (wrapped,) = prepare_tasks([[1, 2]])  # a task whose input is a list
    assert json.loads(wrapped.input_json) == [1, 2]
    (spec,) = prepare_tasks(TaskSpec([1, 2]))
    assert json.loads(spec.input_json) == [1, 2]


def test_rollout_ids_and_per_task_overrides() -> None:
    first, second = prepare_tasks(
        [
            {"rollout_id": "ro-given", "q": 1},
            TaskSpec(
                "x",
                rollout_id="ro-spec",
                task_type="t2",
                mode="test",
                config={"max_attempts": 4},
                resources={"b": "2"},
            ),
        ],
        task_type="t1",
        mode="val",
        config={"max_attempts": 2, "timeout_seconds": 9},
        resources={"a": 1},
        metadata={"k": "v"},
    )
    assert first.rollout_id == "ro-given" and json.loads(first.input_json)["rollout_id"] == "ro-given"
    assert (first.task_type, first.mode, first.resources, first.metadata) == (
        "t1",
        "val",
        {"a": "1"},
        {"k": "v"},
    )
    assert first.config == RolloutConfig(max_attempts=2, timeout_seconds=9)
    assert second.rollout_id == "ro-spec" and (second.task_type, second.mode) == ("t2", "test")
    assert second.config == RolloutConfig(max_attempts=4, timeout_seconds=9)
    assert second.resources == {"a": "1", "b": "2"}


@pytest.mark.parametrize(
    ("tasks", "kwargs", "message"),
    [
        ([{"q": 1}, {"q": object()}], {}, "task 1: task input is not JSON"),
        ({"rollout_id": 7}, {}, "rollout_id must be a non-empty string"),
        ("x", {"mode": "later"}, "mode must be one of"),
        ("x", {"config": {"max_attempts": 0}}, "invalid config: max_attempts"),
        ("x", {"config": {"nope": 1}}, "invalid config: nope"),
        ("x", {"resources": {"model": {"v": 1}}}, "resources['model']"),
        ([{"rollout_id": "r"}, {"rollout_id": "r"}], {}, "task 1: rollout_id 'r' repeats task 0"),
    ],
)
def test_invalid_tasks(tasks: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        prepare_tasks(tasks, **kwargs)


def test_config_strings_become_enums() -> None:
    (task,) = prepare_tasks("x", config={"retry_condition": ["timeout"], "credit_assignment": "discounted"})
    assert task.config.retry_condition == [AttemptStatus.TIMEOUT]
    assert task.config.credit_assignment is CreditAssignment.DISCOUNTED


# ---- enqueue: JSONL files ------------------------------------------------------------------------------
def test_task_file_forms(tmp_path: Path) -> None:
    file = tmp_path / "t.jsonl"
    file.write_text(
        '{"input": {"q": 1}, "rollout_id": "ro-1", "metadata": {"split": "a"}}\n'
        "\n"
        '{"input": "x", "expected": "y"}\n'
        '"plain"\n'
        "42\n"
    )
    tasks = read_task_file(file, task_type="math")
    assert [json.loads(t.input_json) for t in tasks] == [
        {"q": 1},
        {"input": "x", "expected": "y"},
        "plain",
        42,
    ]
    assert tasks[0].rollout_id == "ro-1" and tasks[0].metadata == {"split": "a"}
    assert {t.task_type for t in tasks} == {"math"}


def test_task_file_errors_name_every_bad_line(tmp_path: Path) -> None:
    file = tmp_path / "t.jsonl"
    file.write_text(
        '{"input": 1, "rollout_id": "a"}\n{bad\n{"input": 2, "rollout_id": "a"}\n{"input": 3, "mode": 5}\n'
    )
    with pytest.raises(TaskFileError) as caught:
        read_task_file(file)
    lines = [n for n, _ in caught.value.errors]
    assert lines == [2, 3, 4]
    assert "repeats line 1" in caught.value.errors[1][1]
    assert "nothing was enqueued" in str(caught.value) and "line 2: not JSON" in str(caught.value)


# ---- runner pieces ----------------------------------------------------------------------------------------
def test_agent_arity_and_kind() -> None:
    def one(task: Any) -> None: ...
    def two(task: Any, rollout: Any) -> None: ...
    def named(task: Any, rollout: Any = None) -> None: ...
    def option(task: Any, temperature: float = 0.7) -> None: ...
    def star(*args: Any) -> None: ...
    async def coro(task: Any, r: Any) -> None: ...

    class Callable_:
        async def __call__(self, task: Any) -> None: ...

    assert [wants_rollout(f) for f in (one, two, named, option, star, coro)] == [
        False,
        True,
        True,
        False,
        True,
        True,
    ]
    assert wants_rollout(functools.partial(two, 1)) is False
    assert wants_rollout(lambda t: t) is False
    assert is_async_agent(coro) and is_async_agent(Callable_()) and not is_async_agent(one)


def test_offsets_commit_only_contiguous_done_tasks() -> None:
    part = PartitionOffsets()
    assert part.position() == -1  # nothing received: nothing to commit
    for offset in (5, 6, 7, 8):
        part.received(offset)
    assert part.position() == 5
    part.done(6)
    part.done(8)
    assert part.position() == 5  # 5 still runs
    part.done(5)
    assert part.position() == 7
    part.done(7)
    assert part.position() == 9 and part.pending == {}


@pytest.mark.parametrize("lifecycle", [True, False])
def test_rollout_counts_llm_usage(lifecycle: bool) -> None:
    client = RecordingEmitter()
    emitter: Emitter = client  # the stub is an Emitter
    with Rollout(emitter, "t", lifecycle_events=lifecycle) as rollout:
        for usage in (
            {"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 3},
            {"gen_ai.usage.input_tokens": "7"},
            {},
        ):
            with rollout.span("chat", kind="llm") as span:
                span.set_attributes(usage)
        with rollout.span("tool", kind="tool") as span:
            span.set_attribute("gen_ai.usage.input_tokens", 99)
    assert (rollout.llm_calls, rollout.input_tokens, rollout.output_tokens) == (3, 17, 3)
    assert rollout.started_at > 0
    assert client.lifecycle == (["started", "finished"] if lifecycle else [])
