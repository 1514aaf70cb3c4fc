"""agentstream: make LLM agents improve continuously, on Kafka and ClickHouse.

The agent-side SDK is available at the top level::

    import agentstream

    agentstream.init(service_name="support-bot")
    agentstream.instrument_openai()            # LLM calls become spans

    with agentstream.rollout({"ticket": text}) as r:
        reply = agent(text)
        agentstream.emit_reward(1.0 if ok else 0.0, feedback=why)

Or let runners run the agent on enqueued tasks (retries, timeouts, rewards from return values)::

    agentstream.enqueue(dataset, task_type="math", config={"max_attempts": 3})
    agentstream.Runner(agent, concurrency=8).run()      # on each worker machine

Subpackages, in the direction data flows: ``producers`` (this SDK and runners) -> ``topics``
(the catalogue and record I/O, on the ``schemas`` event contracts) -> ``streams`` (stream
processors) -> ``sinks`` (ClickHouse, reached through ``clickhouse``) and ``trainers`` ->
``resources`` (versioned prompts and checkpoints) -> runners again. Around them: ``settings``,
``serving`` (model servers), ``analytics`` (dashboard, reports), ``deploy`` (embedded broker,
local stack), ``process`` (our server processes) and ``cli`` (the ``agentstream`` command).
"""

from agentstream.producers import (
    AgentStream,
    Rollout,
    Runner,
    TaskSpec,
    bind_context,
    current_rollout,
    current_span,
    emit_message,
    emit_reward,
    enqueue,
    flush,
    init,
    instrument_openai,
    rollout,
    shutdown,
    span,
    traced,
)
from agentstream.schemas import RolloutConfig

__version__ = "0.1.0"

__all__ = [
    "AgentStream",
    "Rollout",
    "RolloutConfig",
    "Runner",
    "TaskSpec",
    "__version__",
    "bind_context",
    "current_rollout",
    "current_span",
    "emit_message",
    "emit_reward",
    "enqueue",
    "flush",
    "init",
    "instrument_openai",
    "rollout",
    "shutdown",
    "span",
    "traced",
]
