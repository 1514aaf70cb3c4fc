"""The SDK client: record what the agent does and stream it to Kafka without ever blocking it."""

from __future__ import annotations

import atexit
import math
import numbers
import os
import random
import socket
from collections.abc import Callable, Mapping
from typing import Any

from agentstream.schemas import RewardSource, SpanKind, genai, now_us
from agentstream.schemas.reward import HANDOFF_ATTRIBUTE
from agentstream.schemas.rollout_event import RolloutConfig, RolloutEventType
from agentstream.settings import Settings
from agentstream.topics.catalogue import DEAD_LETTER, REWARDS, ROLLOUT_EVENTS, SCHEMAS, SPANS

from .delivery import DeliveryStats, DeliveryWorker
from .records import RecordEncoder
from .redaction import Redactor, build_redactor
from .spool import SpooledRecord
from .tasks import prepare_tasks
from .tracer import ActiveSpan, Rollout, current_rollout, current_span, open_span, to_json

SDK_VERSION = "0.1.0"


def resolve_settings(settings: Settings | None = None) -> Settings:
    """The settings an SDK client runs with: ``settings`` (default: from ``AGENTSTREAM_*``
    variables), with the running stack's bootstrap servers when none are set.

    The one place the SDK resolves settings: :func:`~agentstream.producers.sdk.init`, a
    :class:`~agentstream.producers.runner.Runner` and the CLI resolve once and pass the result
    down; resolving resolved settings returns them unchanged.
    """
    return (settings if settings is not None else Settings()).resolved()


class AgentStream:
    """Records spans, rewards and rollout events, and delivers them in the background.

    Usually created once per process with :func:`agentstream.init`; every other SDK call then
    uses it. Emitting never blocks and never raises because Kafka is slow or down: records queue
    in memory, spill to a local spool during outages, and are replayed in order.

    It is the :class:`~agentstream.producers.tracer.Emitter` its rollouts and spans report to.

    Message content is redacted before it leaves the process (e-mail addresses, phone and card
    numbers by default: ``sdk.redact``; see :mod:`~agentstream.producers.redaction`).

    Args:
        settings: where Kafka runs and how to buffer, resolved (see :func:`resolve_settings`, which
            also fills in what is left ``None`` or unresolved here: from ``AGENTSTREAM_*``
            variables and the running stack).
        redactor: replaces the redactor ``sdk.redact`` and ``sdk.redact_recognizers`` describe.

    Raises:
        ValueError: ``sdk.redact`` names an unknown entity, or a recogniser cannot be loaded.
    """

    def __init__(self, settings: Settings | None = None, *, redactor: Redactor | None = None) -> None:
        settings = resolve_settings(settings)
        self.settings = settings
        sdk = settings.sdk
        if redactor is None:
            redactor = build_redactor(sdk.redact, sdk.redact_recognizers)
        self.resource_attributes = {
            "service.name": sdk.service_name,
            "host.name": socket.gethostname(),
            "process.pid": str(os.getpid()),
            "telemetry.sdk.name": "agentstream",
            "telemetry.sdk.version": SDK_VERSION,
        }
        self._encoder = RecordEncoder(settings, self.resource_attributes, redactor)
        schemas = (
            []
            if settings.schema_registry_url
            else [(s.fingerprint.hex(), s.json) for s in self._encoder.schemas]
        )
        self._worker = DeliveryWorker(
            settings.producer_config(),
            settings.admin_config(),
            self._encode,
            [settings.topic(t.name) for t in (SPANS, REWARDS, ROLLOUT_EVENTS)],
            spool_root=settings.spool_dir,
            name=sdk.service_name,
            queue_size=sdk.queue_size,
            replay_window_seconds=sdk.replay_window_seconds,
            replay_window_bytes=sdk.replay_window_bytes,
            dead_letter_topic=settings.topic(DEAD_LETTER.name),
            schemas_topic=settings.topic(SCHEMAS.name) if schemas else None,
            schemas=schemas,
            spool_max_bytes=sdk.spool_max_bytes,
        )
        self._worker.stats.redacted = self._encoder.redacted  # one dict, counted by the encoder
        self._closed = False
        self._worker.start()
        atexit.register(self.close)
        self._ops = None  # opt-in (sdk.metrics_port): this process serves the SDK's delivery metrics
        if settings.sdk.metrics_port is not None:
            from .metrics import start_sdk_ops

            self._ops = start_sdk_ops(self)

    # ---- tracing ------------------------------------------------------------------------------------
    def rollout(
        self,
        task: Any = None,
        *,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
        attempt_number: int = 1,
        resources: Mapping[str, str] | None = None,
        worker_id: str = "",
        lifecycle_events: bool = True,
    ) -> Rollout:
        """A context manager for one attempt at one task: ``with client.rollout(task) as r: ...``.

        Emits ``attempt_started`` / ``attempt_finished`` rollout events (unless
        ``lifecycle_events=False``: a runner reports them itself) and a root ``agent`` span;
        spans and rewards inside it carry its ids. An exception (or :meth:`Rollout.fail`) marks the
        attempt failed.
        """
        return Rollout(
            self,
            task,
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            attempt_number=attempt_number,
            resources=resources,
            worker_id=worker_id,
            lifecycle_events=lifecycle_events,
        )

    def span(
        self,
        name: str,
        *,
        kind: str | SpanKind = "other",
        attributes: Mapping[str, Any] | None = None,
        rollout: Rollout | None = None,
    ) -> ActiveSpan:
        """A span, child of the current one: ``with client.span("search", kind="tool") as s: ...``."""
        return open_span(self, name, kind=kind, attributes=attributes, rollout=rollout)

    def emit_message(self, message: str, *, attributes: Mapping[str, Any] | None = None) -> None:
        """Record a free-text message (a log line of the agent) as a zero-length span."""
        span = self.span("message", kind="other", attributes=attributes)
        span.set_attribute(genai.MESSAGE_BODY, str(message))
        span.end(span.start_time)

    def emit_reward(
        self,
        value: float,
        *,
        name: str = "reward",
        feedback: str | None = None,
        source: str | RewardSource = "rule",
        span_id: str | None = None,
        response_id: str | None = None,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
        rollout: Rollout | None = None,
        attributes: Mapping[str, Any] | None = None,
        handoff: str | None = None,
    ) -> str:
        """Emit a reward and return its id.

        Inside a rollout it targets that rollout; elsewhere (a webhook reporting that a ticket was
        resolved, a human rating) pass ``rollout_id``. ``span_id`` or ``response_id`` (the
        ``gen_ai.response.id`` of an LLM call) narrow the target. ``handoff`` (e.g. ``"human"``)
        says the rollout was handed to someone else; analytics count it in the handoff rate.

        Raises:
            ValueError: ``value`` is not a finite number, ``source`` is unknown, or no rollout is
                given or current.
        """
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not _finite(value):
            raise ValueError(f"emit_reward: value must be a finite number, got {value!r}")
        try:
            source = RewardSource(source).value
        except ValueError as e:
            raise ValueError(
                f"emit_reward: unknown source {source!r}; use one of {[s.value for s in RewardSource]}"
            ) from e
        rollout = rollout or current_rollout()
        target = rollout_id or (rollout.rollout_id if rollout is not None else None)
        if not target:
            raise ValueError(
                "emit_reward: no rollout; call it inside `with rollout(...)` or pass rollout_id="
            )
        inside = rollout is not None and rollout.rollout_id == target
        parent = current_span() if inside else None
        reward_id = f"rw-{random.getrandbits(64):016x}"
        datum: dict[str, Any] = {
            "reward_id": reward_id,
            "rollout_id": target,
            "attempt_id": attempt_id if attempt_id is not None else (rollout.attempt_id if inside else ""),
            "span_id": span_id,
            "response_id": response_id,
            "trace_id": parent.trace_id if parent is not None else (rollout.trace_id if inside else None),
            "parent_span_id": parent.span_id if parent is not None else None,
            "sequence_id": rollout.next_sequence_id() if inside else 0,
            "name": str(name),
            "value": float(value),
            "feedback": None if feedback is None else str(feedback),
            "source": source,
            "timestamp": now_us(),
            "attributes": {
                str(k): v if isinstance(v, str) else to_json(v) for k, v in (attributes or {}).items()
            },
        }
        if handoff is not None:
            datum["attributes"][HANDOFF_ATTRIBUTE] = str(handoff)
        self._worker.submit(("reward", datum))
        return reward_id

    def emit_rollout_event(
        self,
        rollout_id: str,
        type: str | RolloutEventType,
        *,
        attempt_id: str = "",
        attempt_number: int = 0,
        status: str = "",
        error: str | None = None,
        worker_id: str = "",
        task: Any = None,
        resources: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        task_type: str = "",
        mode: str = "",
        config: RolloutConfig | None = None,
        started_at: int | None = None,
        llm_calls: int = 0,
        input_tokens: int = 0,
        output_tokens: int = 0,
        on_delivered: Callable[[], None] | None = None,
    ) -> str:
        """Emit one lifecycle event of a rollout; returns its id.

        ``on_delivered`` runs on the delivery thread once Kafka acknowledged the event (also when
        it goes out later from the outage spool); it must be quick and must not block.
        """
        event_id = f"ev-{random.getrandbits(64):016x}"
        datum: dict[str, Any] = {
            "event_id": event_id,
            "rollout_id": rollout_id,
            "attempt_id": attempt_id,
            "attempt_number": attempt_number,
            "type": RolloutEventType(type).value,
            "status": status,
            "error": error,
            "worker_id": worker_id,
            "timestamp": now_us(),
            "task": None if task is None else (task if isinstance(task, str) else to_json(task)),
            "resources": dict(resources or {}),
            "metadata": dict(metadata or {}),
            "task_type": task_type,
            "mode": mode,
            "config": config.to_avro() if config is not None else None,
            "started_at": started_at,
            "llm_calls": llm_calls,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        if on_delivered is not None:
            self._worker.on_delivered(event_id, on_delivered)
        self._worker.submit(("rollout_event", datum))
        return event_id

    # ---- tasks ----------------------------------------------------------------------------------------
    def enqueue(
        self,
        tasks: Any,
        *,
        task_type: str = "",
        mode: str = "train",
        config: RolloutConfig | Mapping[str, Any] | None = None,
        resources: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Enqueue tasks for runners; returns their rollout ids, in order.

        ``tasks`` is one task or many: a list, tuple or generator is many tasks (wrap a task whose
        input is itself a list: ``[the_list]`` or :class:`TaskSpec`). A task is any JSON value, the
        agent's input; a dict with a ``"rollout_id"`` key names its rollout (else a random
        ``ro-…`` id is drawn), and a :class:`TaskSpec` sets per-task fields. Each task becomes a
        ``task_enqueued`` rollout event, delivered in the background like everything else (call
        :meth:`flush` to wait for it).

        Args:
            task_type: selects e.g. the credit-assignment strategy of the stream processors.
            mode: ``train``, ``val``, ``test`` or ``prod``.
            config: retries and watchdogs (a :class:`RolloutConfig` or a dict of its fields).
            resources: pinned resource versions (name -> version) the attempts must use.
            metadata: free-form string tags.

        Raises:
            ValueError: a task is invalid (nothing is enqueued then).
        """
        prepared = prepare_tasks(
            tasks, task_type=task_type, mode=mode, config=config, resources=resources, metadata=metadata
        )
        for task in prepared:
            self.emit_rollout_event(
                task.rollout_id,
                RolloutEventType.TASK_ENQUEUED,
                task=task.input_json,
                resources=task.resources,
                metadata=task.metadata,
                task_type=task.task_type,
                mode=task.mode,
                config=task.config,
            )
        return [task.rollout_id for task in prepared]

    # ---- what the tracer reports (the Emitter protocol) -----------------------------------------------
    def emit_span(self, span: ActiveSpan) -> None:
        """Queue an ended span for delivery (:meth:`ActiveSpan.end` calls it)."""
        self._worker.submit(span)

    def rollout_started(self, rollout: Rollout) -> None:
        """Emit ``attempt_started`` for a rollout entered with lifecycle events."""
        self.emit_rollout_event(
            rollout.rollout_id,
            RolloutEventType.ATTEMPT_STARTED,
            attempt_id=rollout.attempt_id,
            attempt_number=rollout.attempt_number,
            status="running",
            worker_id=rollout.worker_id,
            task=rollout.task,
            resources=rollout.resources,
        )

    def rollout_finished(self, rollout: Rollout) -> None:
        """Emit ``attempt_finished`` (status, error, usage) for a rollout exited with lifecycle events."""
        self.emit_rollout_event(
            rollout.rollout_id,
            RolloutEventType.ATTEMPT_FINISHED,
            attempt_id=rollout.attempt_id,
            attempt_number=rollout.attempt_number,
            status=rollout.status,
            error=rollout.error,
            worker_id=rollout.worker_id,
            resources=rollout.resources,
            started_at=rollout.started_at or None,
            llm_calls=rollout.llm_calls,
            input_tokens=rollout.input_tokens,
            output_tokens=rollout.output_tokens,
        )

    # ---- delivery -------------------------------------------------------------------------------------
    def _encode(self, item: Any) -> SpooledRecord:
        """A queued item as its Kafka record (on the delivery thread)."""
        if isinstance(item, ActiveSpan):
            return self._encoder.span(item)
        kind, datum = item
        if kind == "reward":
            return self._encoder.reward(datum)
        return self._encoder.rollout_event(datum)

    @property
    def stats(self) -> DeliveryStats:
        return self._worker.stats

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything emitted so far is delivered; False on timeout (nothing is lost:
        undelivered records stay in the spool)."""
        return self._worker.flush(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Flush and stop delivery. Also runs at interpreter exit."""
        if self._closed:
            return True
        self._closed = True
        atexit.unregister(self.close)
        if self._ops is not None:
            self._ops.stop()
        return self._worker.close(timeout)

    def __enter__(self) -> AgentStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _finite(value: numbers.Real) -> bool:
    """Whether ``value`` is a finite float (an int too large for a float is not: 10**400)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
