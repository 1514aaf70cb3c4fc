"""The agent-side SDK: tracing, rewards, OpenAI capture, and background delivery to Kafka.

Most code uses the functions re-exported by ``agentstream`` itself::

    import agentstream

    agentstream.init(service_name="support-bot")
    with agentstream.rollout({"ticket": text}) as r:
        with agentstream.span("classify", kind="tool"):
            ...
        agentstream.emit_reward(1.0, feedback="correct queue")

Modules: :mod:`.tracer` (rollouts, spans and the :class:`Emitter` protocol they report to),
:mod:`.client` (:class:`AgentStream`, the emitter that delivers to Kafka), :mod:`.sdk` (``init`` and
the module-level calls), :mod:`.records`, :mod:`.delivery`, :mod:`.replay_window` and
:mod:`.spool` (getting records to Kafka through outages), :mod:`.tasks` (enqueueing),
:mod:`.runner` with :mod:`.attempts`, :mod:`.agent_calls`, :mod:`.task_offsets` and
:mod:`.resource_choice` (running agents on tasks), :mod:`.openai` (capturing OpenAI calls).
"""

from __future__ import annotations

from typing import Any

from .client import AgentStream, resolve_settings
from .runner import Runner, RunnerStats
from .sdk import (
    default_client,
    emit_message,
    emit_reward,
    enqueue,
    flush,
    init,
    rollout,
    shutdown,
    span,
    traced,
)
from .tasks import TaskFileError, TaskSpec, read_task_file
from .tracer import ActiveSpan, Emitter, Rollout, bind_context, current_rollout, current_span


def instrument_openai(client: Any = None) -> None:
    """Capture OpenAI chat and text completions as LLM spans; see :mod:`agentstream.producers.openai`."""
    # Imported here: ``openai`` is needed only by agents that use it.
    from .openai import instrument_openai as _instrument

    _instrument(client)


__all__ = [
    "ActiveSpan",
    "AgentStream",
    "Emitter",
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
    "resolve_settings",
    "rollout",
    "shutdown",
    "span",
    "traced",
]
