"""Spans and rollouts in the agent's code: context managers, the ``@traced`` decorator, and the
context that nests them.

The current rollout and span live in :mod:`contextvars`, so nesting follows asyncio tasks
automatically; for threads, run work through :func:`bind_context` (or ``asyncio.to_thread``, which
copies the context itself).

What is recorded goes to an :class:`Emitter`: the tracer knows only that protocol, which
:class:`~agentstream.producers.client.AgentStream` implements (and test doubles can).
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import math
import random
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from agentstream.schemas import SpanKind, StatusCode, genai, new_rollout_id, now_us

from .attributes import attribute_value, to_json
from .prompts import Prompt, render_prompt

_current_span: contextvars.ContextVar[ActiveSpan | None] = contextvars.ContextVar(
    "agentstream_span", default=None
)
_current_rollout: contextvars.ContextVar[Rollout | None] = contextvars.ContextVar(
    "agentstream_rollout", default=None
)

_KINDS = {k.value: k.value for k in SpanKind}


def new_trace_id() -> str:
    return f"{random.getrandbits(128):032x}"


def new_span_id() -> str:
    return f"{random.getrandbits(64):016x}"


def current_span() -> ActiveSpan | None:
    """The innermost open span of this context, if any."""
    return _current_span.get()


def current_rollout() -> Rollout | None:
    """The rollout this context runs in, if any."""
    return _current_rollout.get()


def bind_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Capture the current rollout/span context so ``fn`` nests correctly when run in another thread.

    >>> pool.submit(agentstream.bind_context(work), item)
    """
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        return ctx.copy().run(fn, *args, **kwargs)

    return run


class Emitter(Protocol):
    """Where the tracer sends what it records: spans as they end, rewards, and the start and end
    of a rollout. :class:`~agentstream.producers.client.AgentStream` is the one SDK users get."""

    def span(
        self,
        name: str,
        *,
        kind: str = "other",
        attributes: Mapping[str, Any] | None = None,
        rollout: Rollout | None = None,
    ) -> ActiveSpan:
        """A new span of this emitter (see :func:`open_span`)."""
        ...

    def emit_span(self, span: ActiveSpan) -> None:
        """Take an ended span for delivery; never blocks, never raises."""
        ...

    def emit_reward(
        self,
        value: float,
        *,
        name: str = "reward",
        feedback: str | None = None,
        source: str = "rule",
        span_id: str | None = None,
        response_id: str | None = None,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
        rollout: Rollout | None = None,
        attributes: Mapping[str, Any] | None = None,
        handoff: str | None = None,
    ) -> str:
        """Emit a reward; returns its id."""
        ...

    def rollout_started(self, rollout: Rollout) -> None:
        """A rollout's ``with`` block was entered (only for rollouts with lifecycle events)."""
        ...

    def rollout_finished(self, rollout: Rollout) -> None:
        """A rollout's ``with`` block exited (only for rollouts with lifecycle events)."""
        ...


def open_span(
    emitter: Emitter,
    name: str,
    *,
    kind: str = "other",
    attributes: Mapping[str, Any] | None = None,
    rollout: Rollout | None = None,
) -> ActiveSpan:
    """A span of ``emitter`` in ``rollout`` (default: the current one), child of the current span
    when that span belongs to the same rollout."""
    rollout = rollout or current_rollout()
    parent = current_span()
    if parent is not None and parent.rollout is not rollout:
        parent = None  # a span of another rollout is not our parent
    return ActiveSpan(emitter, name, str(kind), rollout, parent, attributes)


class Rollout:
    """One attempt at one task. Spans and rewards inside it carry its ids and a monotonic sequence.

    It also counts the LLM calls made inside it (``llm``-kind spans) and sums their
    ``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens``: ``llm_calls``,
    ``input_tokens`` and ``output_tokens``, reported on ``attempt_finished``.
    """

    __slots__ = (
        "client",
        "rollout_id",
        "attempt_id",
        "attempt_number",
        "trace_id",
        "task",
        "resources",
        "resolved",
        "mode",
        "worker_id",
        "lifecycle_events",
        "started_at",
        "llm_calls",
        "input_tokens",
        "output_tokens",
        "_usage_lock",
        "_sequence",
        "_root",
        "_token",
        "status",
        "error",
    )

    def __init__(
        self,
        client: Emitter,
        task: Any = None,
        *,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
        attempt_number: int = 1,
        resources: Mapping[str, str] | None = None,
        worker_id: str = "",
        lifecycle_events: bool = True,
    ) -> None:
        self.client = client
        self.rollout_id = rollout_id or new_rollout_id()
        self.attempt_id = attempt_id or f"at-{random.getrandbits(64):016x}"
        self.attempt_number = attempt_number
        self.trace_id = new_trace_id()
        self.task = task
        self.resources: dict[str, str] = dict(resources or {})
        #: the resource versions a runner resolved for this attempt (name -> ResourceVersion)
        self.resolved: dict[str, Any] = {}
        #: the task's mode (train, val, test, prod) when a runner runs it
        self.mode = "train"
        self.worker_id = worker_id
        # False when a runner reports attempt_started/attempt_finished itself (lazily, with retries
        # and releases the context manager cannot know about).
        self.lifecycle_events = lifecycle_events
        self.started_at = 0
        self.llm_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self._usage_lock = threading.Lock()
        self._sequence = itertools.count(1)
        self._root: ActiveSpan | None = None
        self._token: contextvars.Token[Rollout | None] | None = None
        self.status = "running"
        self.error: str | None = None

    def next_sequence_id(self) -> int:
        return next(self._sequence)

    def _count_llm_call(self, attributes: Mapping[str, Any]) -> None:
        """Add one ended LLM span's usage (called from :meth:`ActiveSpan.end`)."""
        input_tokens = _token_count(attributes.get(genai.USAGE_INPUT_TOKENS))
        output_tokens = _token_count(attributes.get(genai.USAGE_OUTPUT_TOKENS))
        # Spans of one rollout may end on several threads (bind_context fan-out).
        with self._usage_lock:
            self.llm_calls += 1
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens

    # -- SDK conveniences bound to this rollout ------------------------------------------------------
    def emit_reward(self, value: float, **kwargs: Any) -> str:
        """Emit a reward for this rollout; see :meth:`AgentStream.emit_reward`."""
        return self.client.emit_reward(value, rollout=self, **kwargs)

    def span(self, name: str, **kwargs: Any) -> ActiveSpan:
        return self.client.span(name, rollout=self, **kwargs)

    def resource(self, name: str) -> Any:
        """The version of resource ``name`` this attempt uses (a ``ResourceVersion``; runners resolve
        it from the task's pin or the A/B split, and it is stamped on the rollout and its spans)."""
        try:
            return self.resolved[name]
        except KeyError:
            known = sorted(self.resolved)
            raise KeyError(
                f"resource {name!r} was not resolved for this rollout; resolved: {known}"
            ) from None

    def render(self, name: str, **values: Any) -> Prompt:
        """Resource ``name`` (a prompt template) rendered with ``values``, its retrieved
        demonstrations and response prefix; see :mod:`agentstream.producers.prompts`."""
        return render_prompt(self.resolved, name, values)

    def fail(self, error: str) -> None:
        """Mark the attempt failed without raising (e.g. the agent gave up)."""
        self.status = "failed"
        self.error = error

    # -- context manager ----------------------------------------------------------------------------
    def __enter__(self) -> Rollout:
        self._token = _current_rollout.set(self)
        self.started_at = now_us()
        if self.lifecycle_events:
            self.client.rollout_started(self)
        self._root = ActiveSpan(
            self.client, "rollout", SpanKind.AGENT.value, self, parent=None, attributes=None
        )
        if self.task is not None:
            self._root.set_attribute("agentstream.task.input", self.task)
        self._root.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.status = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
        elif self.status == "running":
            self.status = "succeeded"
        assert self._root is not None
        if self.status == "failed" and exc is None:
            self._root.set_status(StatusCode.ERROR.value, self.error)
        self._root.__exit__(exc_type, exc, tb)
        if self.lifecycle_events:
            self.client.rollout_finished(self)
        if self._token is not None:
            _current_rollout.reset(self._token)

    async def __aenter__(self) -> Rollout:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


class ActiveSpan:
    """A span being recorded. Ends (and is emitted) when its ``with`` block exits or on :meth:`end`.

    Attributes follow OpenTelemetry: str, bool, int, float, or a sequence of them (kept as strings).
    Dicts and lists of dicts are stored as JSON strings.

    A ``tool`` span gets ``gen_ai.operation.name = execute_tool`` and ``gen_ai.tool.name`` (its
    name) unless given; an ``llm`` span opened inside a ``reward`` span or an ``evaluate``
    operation of its rollout (at any depth) gets ``agentstream.judge = True``: a judge's call,
    recorded but never credited nor trained on.
    """

    __slots__ = (
        "client",
        "rollout",
        "name",
        "kind",
        "trace_id",
        "span_id",
        "parent_span_id",
        "start_time",
        "end_time",
        "status",
        "error",
        "attributes",
        "events",
        "resource_name",
        "resource_version",
        "prompt_token_ids",
        "response_token_ids",
        "response_logprobs",
        "sequence_id",
        "judging",
        "_token",
    )

    def __init__(
        self,
        client: Emitter,
        name: str,
        kind: str,
        rollout: Rollout | None,
        parent: ActiveSpan | None,
        attributes: Mapping[str, Any] | None,
    ) -> None:
        self.client = client
        self.rollout = rollout
        self.name = name
        self.kind = _KINDS.get(kind) or _kind(kind)
        self.trace_id: str
        self.parent_span_id: str | None
        if parent is not None:
            self.trace_id = parent.trace_id
            self.parent_span_id = parent.span_id
        else:
            self.trace_id = rollout.trace_id if rollout is not None else new_trace_id()
            self.parent_span_id = None
        self.span_id: str = new_span_id()
        self.start_time = now_us()
        self.end_time = 0
        self.status = StatusCode.UNSET.value
        self.error: str | None = None
        # One dict, split by type on the delivery thread: few objects per span for the GC.
        self.attributes: dict[str, Any] = {}
        self.events: list[dict[str, Any]] | None = None
        if rollout is not None and rollout.resources:
            self.resource_name, self.resource_version = next(iter(rollout.resources.items()))
        else:
            self.resource_name = self.resource_version = ""
        self.prompt_token_ids: Sequence[int] = ()
        self.response_token_ids: Sequence[int] = ()
        self.response_logprobs: Sequence[float] = ()
        self.sequence_id = 0
        self._token: contextvars.Token[ActiveSpan | None] | None = None
        # True inside a reward span or an evaluation (at any depth, inherited from the parent): an LLM
        # call made there is a judge's, recorded but never credited nor trained on (issue 14, 3b).
        self.judging: bool = self.kind == "reward" or (parent is not None and parent.judging)
        if attributes:
            self.set_attributes(attributes)
        if self.kind == "llm" and parent is not None and parent.judging:
            self.attributes[genai.JUDGE] = True
        elif self.kind == "tool":
            # What the OTel GenAI ``execute_tool`` span says, for tools traced without naming it.
            self.attributes.setdefault(genai.OPERATION_NAME, genai.OPERATION_EXECUTE_TOOL)
            self.attributes.setdefault(genai.TOOL_NAME, name)

    # -- recording ----------------------------------------------------------------------------------
    def set_attribute(self, key: str, value: Any) -> ActiveSpan:
        """Record one attribute. Never raises: a value that cannot be kept as it is is coerced or
        dropped with a warning (see :func:`.attributes.attribute_value`)."""
        coerced = attribute_value(key, value)
        if coerced is not None:
            self.attributes[key] = coerced
            if key == genai.OPERATION_NAME and coerced == genai.OPERATION_EVALUATE:
                self.judging = True  # LLM calls opened inside from now on are a judge's
        return self

    def set_attributes(self, attributes: Mapping[str, Any]) -> ActiveSpan:
        for key, value in attributes.items():
            self.set_attribute(key, value)
        return self

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> ActiveSpan:
        attrs = {k: v if isinstance(v, str) else to_json(v) for k, v in (attributes or {}).items()}
        if self.events is None:
            self.events = []
        self.events.append({"name": name, "time": now_us(), "attributes": attrs})
        return self

    def record_exception(self, exc: BaseException) -> ActiveSpan:
        """Add an OTel ``exception`` event and mark the span failed."""
        self.add_event(
            "exception",
            {
                "exception.type": type(exc).__qualname__,
                "exception.message": str(exc),
                "exception.stacktrace": "".join(traceback.format_exception(exc)),
            },
        )
        self.attributes.setdefault("error.type", type(exc).__qualname__)
        return self.set_status(StatusCode.ERROR.value, f"{type(exc).__name__}: {exc}")

    def set_status(self, status: str, error: str | None = None) -> ActiveSpan:
        self.status = StatusCode(status).value
        self.error = error
        return self

    def set_token_ids(
        self,
        prompt: Sequence[int] | None = None,
        response: Sequence[int] | None = None,
        response_logprobs: Sequence[float] | None = None,
    ) -> ActiveSpan:
        """The exact tokens of an LLM call and, when the server reported them, the log-probability
        of each response token (what RL trainers need for importance sampling)."""
        if prompt is not None:
            self.prompt_token_ids = prompt
        if response is not None:
            self.response_token_ids = response
        if response_logprobs is not None:
            self.response_logprobs = response_logprobs
        return self

    def set_resource(self, name: str, version: str | int) -> ActiveSpan:
        self.resource_name, self.resource_version = name, str(version)
        return self

    # -- lifecycle ----------------------------------------------------------------------------------
    def end(self, end_time: int | None = None) -> None:
        """End and emit the span (idempotent)."""
        if self.end_time:
            return
        self.end_time = end_time or now_us()
        if self.status == StatusCode.UNSET.value:
            self.status = StatusCode.OK.value
        if self.rollout is not None:
            self.sequence_id = self.rollout.next_sequence_id()
            if self.kind == "llm":
                self.rollout._count_llm_call(self.attributes)
        self.client.emit_span(self)

    def __enter__(self) -> ActiveSpan:
        self._token = _current_span.set(self)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.record_exception(exc)
        if self._token is not None:
            _current_span.reset(self._token)
            self._token = None
        self.end()

    async def __aenter__(self) -> ActiveSpan:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


def _kind(kind: str) -> str:
    raise ValueError(f"unknown span kind {kind!r}; use one of {sorted(_KINDS)}")


def _token_count(value: Any) -> int:
    """A usage attribute as a token count; 0 when absent or not a count."""
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value > 0 else 0
    if isinstance(value, str):
        try:
            return max(int(value), 0)
        except ValueError:
            return 0
    return 0
