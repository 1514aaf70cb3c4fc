"""What online GRPO is fed: prompts from real traffic, and the user's reward (see :mod:`.grpo`).

Prompts come from the task inputs on the tasks topic (:func:`prompts_from_tasks`) or from the
prompts of recent triplets in ClickHouse (:func:`prompts_from_triplets`); a task input's fields
become dataset columns that reach the reward. The reward is a callable or ``"module:function"``
(:func:`reward_function` puts it in trl's batch signature).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentstream.schemas import Task
from agentstream.schemas.genai import otel_messages_to_openai
from agentstream.settings import Settings
from agentstream.topics.catalogue import TASKS

logger = logging.getLogger(__name__)

__all__ = [
    "Reward",
    "as_format",
    "load_callable",
    "prompts_from_tasks",
    "prompts_from_triplets",
    "reward_function",
]

#: a reward: trl's batch function, a per-completion function, or "module:function"
Reward = Callable[..., Any] | str


def load_callable(spec: Callable[..., Any] | str) -> Callable[..., Any]:
    """A callable, or ``"module:function"`` imported (modules of the working directory included)."""
    if callable(spec):
        return spec
    module_name, _, attribute = str(spec).partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected MODULE:FUNCTION, got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load {spec}: {e}") from e
    if not callable(target):
        raise ValueError(f"{spec} is not callable")
    function: Callable[..., Any] = target
    return function


def reward_function(reward: Reward) -> Callable[..., list[float | None]]:
    """The reward in trl's batch signature.

    A reward with a ``completions`` parameter already has it: ``f(prompts, completions, **columns)
    -> list[float]``. Any other is called per completion, ``f(completion, **columns) -> float``, with
    the answer's text as ``completion``.
    """
    function = load_callable(reward)
    parameters: Mapping[str, inspect.Parameter]
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        parameters = {}
    if "completions" in parameters:
        return function

    def per_completion(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        rows = [{k: v[i] for k, v in columns.items() if isinstance(v, list)} for i in range(len(completions))]
        return [
            None if (value := function(_completion_text(c), **row)) is None else float(value)
            for c, row in zip(completions, rows)
        ]

    per_completion.__name__ = getattr(function, "__name__", "reward")
    return per_completion


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))


def _columns(task_input: Any) -> dict[str, Any]:
    """A task input's fields as dataset columns: scalars as they are, anything else as JSON."""
    columns: dict[str, Any] = {"task": json.dumps(task_input, ensure_ascii=False)}
    if isinstance(task_input, dict):
        for key, value in task_input.items():
            if key in ("prompt", "completion", "completion_ids", "task"):
                continue  # trl's own columns (and ours) keep their meaning
            columns[str(key)] = (
                value
                if isinstance(value, (str, int, float, bool)) or value is None
                else json.dumps(value, ensure_ascii=False)
            )
    return columns


def _default_prompt(task_input: Any) -> Any:
    if isinstance(task_input, str):
        return task_input
    if isinstance(task_input, dict):
        if isinstance(task_input.get("prompt"), str):
            return task_input["prompt"]
        if isinstance(task_input.get("messages"), list):
            return task_input["messages"]
    raise ValueError(
        "a task input needs a 'prompt' (text) or 'messages' (chat) field, or must be a string; "
        f"otherwise give OnlineGRPOConfig(prompt=...) to build one: {str(task_input)[:200]}"
    )


def prompts_from_tasks(
    settings: Settings,
    *,
    prompt: Callable[[Any], Any] | str | None = None,
    task_type: str | None = None,
    modes: Sequence[str] = ("train",),
    limit: int = 256,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Rows ``{"prompt", "task", <input fields>...}`` from the tasks topic: the newest ``limit``
    rollouts (one row each, whatever their retries) of the given modes and task type."""
    from agentstream.topics.io import TopicReader

    build = load_callable(prompt) if prompt is not None else _default_prompt
    latest: dict[str, Task] = {}

    def keep(_spec: Any, _key: bytes | None, task: Task) -> None:
        if (task_type is None or task.task_type == task_type) and (not modes or task.mode in modes):
            latest[task.rollout_id] = task

    TopicReader(settings.resolved(), [TASKS], keep, name="grpo-prompts").read_to_end(timeout)
    tasks = sorted(latest.values(), key=lambda t: t.enqueued_at)[-limit:] if limit > 0 else []
    rows = []
    for task in tasks:
        task_input = json.loads(task.input)
        try:
            row_prompt = build(task_input)
        except ValueError as e:
            logger.warning("task %s skipped: %s", task.rollout_id, e)
            continue
        rows.append({"prompt": row_prompt, **_columns(task_input), "rollout_id": task.rollout_id})
    return rows


def prompts_from_triplets(
    client: Any,
    *,
    resource_name: str | None = None,
    task_type: str | None = None,
    modes: Sequence[str] = ("train",),
    limit: int = 256,
) -> list[dict[str, Any]]:
    """Rows from the newest distinct prompts of the triplets table (``client``: clickhouse-connect,
    e.g. :func:`agentstream.clickhouse.connect.connect`), with the input of the rollout they came from."""
    where = ["NOT t.retracted"]  # withdrawn triplets (judge calls, duplicates) are no policy prompts
    parameters: dict[str, Any] = {"limit": limit, "modes": list(modes)}
    if resource_name is not None:
        where.append("t.resource_name = {resource:String}")
        parameters["resource"] = resource_name
    if task_type is not None:
        where.append("t.task_type = {task_type:String}")
        parameters["task_type"] = task_type
    if modes:
        where.append("t.mode IN {modes:Array(String)}")
    query = f"""
        SELECT t.prompt_messages, argMax(t.rollout_id, t.created_at), argMax(s.input, t.created_at)
        FROM (SELECT * FROM triplets FINAL) AS t
        LEFT JOIN (SELECT rollout_id, argMax(input, version) AS input FROM rollout_states GROUP BY rollout_id) AS s
            ON s.rollout_id = t.rollout_id
        WHERE {" AND ".join(where)}
        GROUP BY t.prompt_messages
        ORDER BY max(t.created_at) DESC
        LIMIT {{limit:UInt32}}
    """
    rows = []
    for prompt_messages, rollout_id, task_input in client.query(query, parameters=parameters).result_rows:
        try:
            messages = otel_messages_to_openai(json.loads(prompt_messages))
        except (ValueError, TypeError, KeyError, AttributeError):
            messages = [{"role": "user", "content": prompt_messages}]
        try:
            decoded = json.loads(task_input) if task_input else None
        except ValueError:
            decoded = task_input
        rows.append({"prompt": messages, **_columns(decoded), "rollout_id": rollout_id})
    return rows


def as_format(prompt: Any, fmt: str) -> Any:
    """Chat messages or text, as the model is trained (text: message contents joined by newlines)."""
    if fmt == "messages":
        return (
            [{"role": "user", "content": prompt}]
            if isinstance(prompt, str)
            else [{"role": m.get("role", "user"), "content": _completion_text([m])} for m in prompt]
        )
    return prompt if isinstance(prompt, str) else "\n".join(_completion_text([m]) for m in prompt)
