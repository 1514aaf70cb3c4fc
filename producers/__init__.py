"""The agent-side SDK: tracing, rewards, OpenAI capture, and background delivery to Kafka.

Most code uses the functions re-exported by ``agentstream`` itself::

    import agentstream

    agentstream.init(service_name="support-bot")
    with agentstream.rollout({"ticket": text}) as r:
        with agentstream.span("classify", kind="tool"):
            ...
        agentstream.emit_reward(1.0, feedback="correct queue")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .client import AgentStream, default_client, init, shutdown
from .runner import Runner, RunnerStats
from .tasks import TaskFileError, TaskSpec, read_task_file
from .tracer import ActiveSpan, Rollout, bind_context, current_rollout, current_span, traced


def rollout(task: Any = None, **kwargs: Any) -> Rollout:
    """``with agentstream.rollout(task) as r:`` — see :meth:`AgentStream.rollout`."""
    return default_client().rollout(task, **kwargs)


def span(name: str, *, kind: str = "other", attributes: Mapping[str, Any] | None = None) -> ActiveSpan:
    """``with agentstream.span("lookup", kind="tool") as s:`` — see :meth:`AgentStream.span`."""
    return default_client().span(name, kind=kind, attributes=attributes)


def emit_reward(value: float, **kwargs: Any) -> str:
    """Emit a reward; see :meth:`AgentStream.emit_reward`."""
    return default_client().emit_reward(value, **kwargs)


def emit_message(message: str, **kwargs: Any) -> None:
    """Record a message as a zero-length span; see :meth:`AgentStream.emit_message`."""
    default_client().emit_message(message, **kwargs)


def enqueue(tasks: Any, **kwargs: Any) -> list[str]:
    """Enqueue one task or many for runners; returns rollout ids. See :meth:`AgentStream.enqueue`.

    >>> agentstream.enqueue([{"question": "2+2"}, {"question": "3*3"}], task_type="math",
    ...                     config={"max_attempts": 3})
    """
    return default_client().enqueue(tasks, **kwargs)


def flush(timeout: float = 10.0) -> bool:
    """Wait until everything emitted is delivered; False on timeout."""
    return default_client().flush(timeout)


def instrument_openai(client: Any = None) -> None:
    """Capture OpenAI chat and text completions as LLM spans; see :mod:`agentstream.producers.openai`."""
    from .openai import instrument_openai as _instrument

    _instrument(client)


__all__ = [
    "ActiveSpan",
    "AgentStream",
    "Rollout",
    "Runner",
    "RunnerStats",
    "TaskFileError",
    "TaskSpec",
    "bind_context",
    "current_rollout",
    "current_span",
    "default_client",
    "emit_message",
    "emit_reward",
    "enqueue",
    "flush",
    "init",
    "instrument_openai",
    "read_task_file",
    "rollout",
    "shutdown",
    "span",
    "traced",
]
