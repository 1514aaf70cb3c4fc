"""Enqueueing tasks: what a ``task_enqueued`` rollout event carries, built from SDK calls or JSONL files.

A task is any JSON value (the agent's input). Enqueueing one writes a ``task_enqueued`` event
(key: its rollout id) to the rollout-events topic; the lifecycle processor turns it into attempts
on the tasks topic, which :class:`~agentstream.producers.runner.Runner` processes take.

    >>> agentstream.enqueue([{"question": "2+2"}, {"question": "3*3"}], task_type="math", mode="train",
    ...                     config={"max_attempts": 3, "timeout_seconds": 60})
    ['ro-6b1f0c...', 'ro-90aa2e...']
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from agentstream.schemas import RolloutConfig, new_rollout_id

Mode = Literal["train", "val", "test", "prod"]
MODES: tuple[str, ...] = ("train", "val", "test", "prod")

#: Keys of the wrapper form of a JSONL line: ``{"input": ..., "rollout_id": ..., ...}``.
WRAPPER_KEYS = frozenset({"input", "rollout_id", "task_type", "mode", "config", "resources", "metadata"})


@dataclass(frozen=True)
class TaskSpec:
    """One task with per-task settings; fields left ``None`` take the values of the enqueue call.

    Pass these to :meth:`AgentStream.enqueue` when tasks differ in type, config, pins or ids.
    """

    input: Any
    rollout_id: str | None = None
    task_type: str | None = None
    mode: str | None = None
    config: RolloutConfig | Mapping[str, Any] | None = None
    resources: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class PreparedTask:
    """A validated task, ready to become a ``task_enqueued`` event."""

    rollout_id: str
    input_json: str
    task_type: str
    mode: str
    config: RolloutConfig
    resources: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


class TaskFileError(ValueError):
    """A JSONL task file has bad lines; ``errors`` lists ``(line_number, message)``."""

    def __init__(self, path: str, errors: list[tuple[int, str]]) -> None:
        self.path = path
        self.errors = errors
        shown = "\n".join(f"  line {n}: {message}" for n, message in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{path}: {len(errors)} bad line(s), nothing was enqueued:\n{shown}{more}")


def as_config(
    config: RolloutConfig | Mapping[str, Any] | None, base: RolloutConfig | None = None
) -> RolloutConfig:
    """A :class:`RolloutConfig` from a model, a dict (fields over ``base``) or ``None`` (``base``)."""
    base = base or RolloutConfig()
    if config is None:
        return base
    if isinstance(config, RolloutConfig):
        return config
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be an object of RolloutConfig fields, got {type(config).__name__}")
    return RolloutConfig.model_validate({**base.model_dump(), **config})


def _string_map(value: Mapping[str, Any] | None, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be an object of strings, got {type(value).__name__}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError(f"{what} keys must be strings, got {key!r}")
        if item is None or isinstance(item, (dict, list)):
            raise ValueError(f"{what}[{key!r}] must be a string or number, got {item!r}")
        # versions are often ints (prompt v3); the event carries strings
        out[key] = item if isinstance(item, str) else json.dumps(item)
    return out


def _input_json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError as e:
        raise ValueError(f"task input is not JSON-serialisable: {e}") from e


def prepare_task(
    task: Any,
    *,
    task_type: str = "",
    mode: str = "train",
    config: RolloutConfig | Mapping[str, Any] | None = None,
    resources: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> PreparedTask:
    """Validate one task (a :class:`TaskSpec` or a plain input) against the call's defaults.

    A plain input that is a dict with a ``"rollout_id"`` key names its rollout (the key stays in
    the input); otherwise a random ``ro-…`` id is drawn.

    Raises:
        ValueError: the input is not JSON, or a field is invalid.
    """
    if isinstance(task, PreparedTask):
        return task  # validated already (read_task_file)
    if isinstance(task, TaskSpec):
        spec = task
    else:
        rollout_id = task.get("rollout_id") if isinstance(task, Mapping) else None
        spec = TaskSpec(input=task, rollout_id=rollout_id)
    rollout_id = spec.rollout_id
    if rollout_id is not None and (not isinstance(rollout_id, str) or not rollout_id):
        raise ValueError(f"rollout_id must be a non-empty string, got {rollout_id!r}")
    task_mode = spec.mode if spec.mode is not None else mode
    if task_mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {task_mode!r}")
    kind = spec.task_type if spec.task_type is not None else task_type
    if not isinstance(kind, str):
        raise ValueError(f"task_type must be a string, got {kind!r}")
    try:
        base = as_config(config)
        task_config = as_config(spec.config, base)
    except ValidationError as e:
        raise ValueError(f"invalid config: {_pydantic_message(e)}") from e
    pins = _string_map(resources, "resources")
    pins.update(_string_map(spec.resources, "resources"))
    meta = _string_map(metadata, "metadata")
    meta.update(_string_map(spec.metadata, "metadata"))
    return PreparedTask(
        rollout_id=rollout_id or new_rollout_id(),
        input_json=_input_json(spec.input),
        task_type=kind,
        mode=task_mode,
        config=task_config,
        resources=pins,
        metadata=meta,
    )


def prepare_tasks(tasks: Any, **defaults: Any) -> list[PreparedTask]:
    """Validate one task or many (a list, tuple or other non-mapping iterable): all or nothing.

    Raises:
        ValueError: naming the index of the first bad task.
    """
    if isinstance(tasks, (list, tuple)) or (
        isinstance(tasks, Iterable) and not isinstance(tasks, (str, bytes, Mapping))
    ):
        items = list(tasks)
        many = True
    else:
        items = [tasks]
        many = False
    prepared = []
    seen: dict[str, int] = {}
    for index, task in enumerate(items):
        try:
            item = prepare_task(task, **defaults)
            if item.rollout_id in seen:
                raise ValueError(f"rollout_id {item.rollout_id!r} repeats task {seen[item.rollout_id]}")
        except ValueError as e:
            raise ValueError(f"task {index}: {e}" if many else str(e)) from e
        seen[item.rollout_id] = index
        prepared.append(item)
    return prepared


def read_task_file(path: str | Path, **defaults: Any) -> list[PreparedTask]:
    """Parse and validate a JSONL task file; blank lines are skipped.

    Each line is either the wrapper form ``{"input": ..., "rollout_id"?, "task_type"?, "mode"?,
    "config"?, "resources"?, "metadata"?}`` (an object with an ``input`` key and only these keys)
    or any other JSON value, which is the input itself.

    Raises:
        TaskFileError: listing every bad line with its number; nothing is returned then.
    """
    path = Path(path)
    errors: list[tuple[int, str]] = []
    prepared: list[PreparedTask] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as e:
                errors.append((number, f"not JSON: {e}"))
                continue
            try:
                task = prepare_task(_line_spec(value), **defaults)
            except ValueError as e:
                errors.append((number, str(e)))
                continue
            if task.rollout_id in seen:
                errors.append(
                    (number, f"rollout_id {task.rollout_id!r} repeats line {seen[task.rollout_id]}")
                )
                continue
            seen[task.rollout_id] = number
            prepared.append(task)
    if errors:
        raise TaskFileError(str(path), errors)
    return prepared


def _line_spec(value: Any) -> Any:
    if isinstance(value, dict) and "input" in value and WRAPPER_KEYS.issuperset(value):
        return TaskSpec(
            input=value["input"],
            rollout_id=value.get("rollout_id"),
            task_type=value.get("task_type"),
            mode=value.get("mode"),
            config=value.get("config"),
            resources=value.get("resources"),
            metadata=value.get("metadata"),
        )
    return value


def _pydantic_message(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
        for e in error.errors(include_url=False)
    )
