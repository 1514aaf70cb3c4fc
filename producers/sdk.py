"""The process-wide SDK: the client :func:`init` makes, and the calls that record into it.

``agentstream.rollout()``, ``span()``, ``emit_reward()`` ... and ``@traced`` record into the
emitter of the current rollout, else into the client :func:`init` made. Before :func:`init`
they go to a placeholder that records nothing and says so once; the agent's code runs on.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast, overload

from agentstream.schemas import genai
from agentstream.settings import Settings

from .client import AgentStream, resolve_settings
from .redaction import Redactor
from .tracer import ActiveSpan, Emitter, Rollout, current_rollout, open_span, to_json
from .warn_once import warn_once

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class Unconfigured:
    """What SDK calls use before :func:`init`: they record nothing and say so once.

    Anything beyond recording (``rollout``, ``enqueue``, ``settings``...) raises an
    ``AttributeError`` that says to call :func:`init`.
    """

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"agentstream is not initialised: call agentstream.init() before using {name!r}")

    @staticmethod
    def _warn_once() -> None:
        warn_once(
            logger,
            "not initialised",
            "agentstream.init() was not called: spans and rewards are not recorded.",
        )

    def span(
        self,
        name: str,
        *,
        kind: str = "other",
        attributes: Mapping[str, Any] | None = None,
        rollout: Rollout | None = None,
    ) -> ActiveSpan:
        return open_span(self, name, kind=kind, attributes=attributes, rollout=rollout)

    def emit_span(self, span: ActiveSpan) -> None:
        self._warn_once()

    def emit_reward(self, value: float, *args: Any, **kwargs: Any) -> str:
        self._warn_once()
        return ""

    def emit_message(self, message: str, **kwargs: Any) -> None:
        self._warn_once()

    def rollout_started(self, rollout: Rollout) -> None:
        self._warn_once()

    def rollout_finished(self, rollout: Rollout) -> None:
        self._warn_once()

    def flush(self, timeout: float = 10.0) -> bool:
        return True


_default: AgentStream | None = None
_default_lock = threading.Lock()
_UNCONFIGURED = Unconfigured()


def init(
    settings: Settings | None = None,
    *,
    service_name: str | None = None,
    redactor: Redactor | None = None,
    **fields: Any,
) -> AgentStream:
    """Create the process's SDK client (once; later calls replace and close the previous one).

    >>> import agentstream
    >>> agentstream.init(service_name="support-bot")           # Kafka of `agentstream up`
    >>> agentstream.init(bootstrap_servers="kafka:9092")        # or a real cluster

    ``fields`` are :class:`~agentstream.settings.Settings` fields; the rest comes from
    ``AGENTSTREAM_*`` environment variables. ``redactor`` replaces the PII redaction the settings
    describe (``sdk.redact``: e-mail, phone and card numbers; see
    :mod:`agentstream.producers.redaction`).
    """
    global _default
    if settings is None:
        settings = Settings(**fields)
    elif fields:
        settings = settings.model_copy(update=fields)
    if service_name:
        settings = settings.model_copy(
            update={"sdk": settings.sdk.model_copy(update={"service_name": service_name})}
        )
    client = AgentStream(resolve_settings(settings), redactor=redactor)
    with _default_lock:
        previous, _default = _default, client
    if previous is not None:
        previous.close()
    return client


def shutdown(timeout: float = 10.0) -> bool:
    """Flush and close the default client."""
    global _default
    with _default_lock:
        client, _default = _default, None
    return client.close(timeout) if client is not None else True


def initialised_client() -> AgentStream | None:
    """The client :func:`init` made, if it was called (and not shut down since)."""
    return _default


def current_emitter() -> Emitter:
    """Where a span or reward recorded now goes: the current rollout's emitter, else the client
    :func:`init` made, else the placeholder that records nothing."""
    rollout = current_rollout()
    if rollout is not None:
        return rollout.client
    return _default if _default is not None else _UNCONFIGURED


def default_client() -> AgentStream | Unconfigured:
    """The client of the current rollout, else the one :func:`init` created (else the placeholder)."""
    rollout = current_rollout()
    if rollout is not None and isinstance(rollout.client, AgentStream):
        return rollout.client
    return _default if _default is not None else _UNCONFIGURED


# ---- what ``import agentstream`` users call ---------------------------------------------------------------
def rollout(task: Any = None, **kwargs: Any) -> Rollout:
    """``with agentstream.rollout(task) as r:`` — see :meth:`AgentStream.rollout`."""
    started: Rollout = default_client().rollout(task, **kwargs)
    return started


def span(name: str, *, kind: str = "other", attributes: Mapping[str, Any] | None = None) -> ActiveSpan:
    """``with agentstream.span("lookup", kind="tool") as s:`` — see :meth:`AgentStream.span`."""
    return current_emitter().span(name, kind=kind, attributes=attributes)


def emit_reward(value: float, **kwargs: Any) -> str:
    """Emit a reward; see :meth:`AgentStream.emit_reward`."""
    return current_emitter().emit_reward(value, **kwargs)


def emit_message(message: str, **kwargs: Any) -> None:
    """Record a message as a zero-length span; see :meth:`AgentStream.emit_message`."""
    default_client().emit_message(message, **kwargs)


def enqueue(tasks: Any, **kwargs: Any) -> list[str]:
    """Enqueue one task or many for runners; returns rollout ids. See :meth:`AgentStream.enqueue`.

    >>> agentstream.enqueue([{"question": "2+2"}, {"question": "3*3"}], task_type="math",
    ...                     config={"max_attempts": 3})
    """
    rollout_ids: list[str] = default_client().enqueue(tasks, **kwargs)
    return rollout_ids


def flush(timeout: float = 10.0) -> bool:
    """Wait until everything emitted is delivered; False on timeout."""
    return default_client().flush(timeout)


@overload
def traced(fn: F, *, name: str | None = None, kind: str = "other", record_args: bool = False) -> F: ...


@overload
def traced(
    fn: None = None, *, name: str | None = None, kind: str = "other", record_args: bool = False
) -> Callable[[F], F]: ...


def traced(
    fn: F | None = None, *, name: str | None = None, kind: str = "other", record_args: bool = False
) -> F | Callable[[F], F]:
    """Decorate a function (sync or async) so each call runs in a span.

    An exception marks the span failed (with an ``exception`` event and ``error.type``) and is re-raised.

    With ``kind="tool"`` the span is what the OTel GenAI ``execute_tool`` span is: named
    ``execute_tool {tool}`` (``tool``: ``name``, else the function's name), with
    ``gen_ai.tool.name``, the bound arguments as JSON in ``gen_ai.tool.call.arguments`` and the
    return value in ``gen_ai.tool.call.result`` (both bounded to 16 KiB, and left out when
    ``sdk.capture_content`` is off), and ``gen_ai.tool.call.id`` from a ``tool_call_id`` argument
    when the function takes one. ``record_args`` records ``input.value`` / ``output.value`` for
    other kinds.

    >>> @agentstream.traced(kind="tool")
    ... def lookup_order(order_id: str) -> dict: ...
    """

    def decorate(func: F) -> F:
        tool = kind == "tool"
        tool_name = name or getattr(func, "__name__", None) or "tool"
        span_name = f"{genai.OPERATION_EXECUTE_TOOL} {tool_name}" if tool else name or func.__qualname__
        signature = _signature(func) if record_args or tool else None

        def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ActiveSpan:
            emitter = current_emitter()
            if tool:
                span = emitter.span(
                    span_name, kind=kind, attributes=_TOOL_ATTRIBUTES | {genai.TOOL_NAME: tool_name}
                )
                _record_tool_call(span, emitter, signature, args, kwargs)
                return span
            span = emitter.span(span_name, kind=kind)
            if signature is not None:
                bound = _bound_arguments(signature, args, kwargs)
                if bound is not None:
                    span.set_attribute("input.value", to_json(bound))
            return span

        def finish(span: ActiveSpan, result: Any) -> None:
            if tool:
                _record_tool_result(span, result)
            elif record_args:
                span.set_attribute("output.value", to_json(result))

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with start(args, kwargs) as span:
                    result = await func(*args, **kwargs)
                    finish(span, result)
                    return result

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with start(args, kwargs) as span:
                result = func(*args, **kwargs)
                finish(span, result)
                return result

        return cast(F, wrapper)

    return decorate(fn) if fn is not None else decorate


#: how much of a tool call's arguments and result a span keeps (characters): enough to see what the
#: model asked for and got, not a document fetched by a retrieval tool
TOOL_CONTENT_MAX = 16_384
_TOOL_ATTRIBUTES: dict[str, Any] = {genai.OPERATION_NAME: genai.OPERATION_EXECUTE_TOOL}
_TOOL_CALL_ID_PARAMETER = "tool_call_id"


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return None


def _bound_arguments(
    signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any] | None:
    """The call's arguments by parameter name (without ``self`` / ``cls``); ``None`` when they do not
    bind (the call itself will then raise its own ``TypeError``, not ours)."""
    if signature is None:
        return None
    try:
        bound = signature.bind_partial(*args, **kwargs).arguments
    except TypeError:
        return None
    return {k: v for k, v in bound.items() if k not in ("self", "cls")}


def _captures_content(emitter: Emitter) -> bool:
    """The emitter's ``sdk.capture_content`` (the placeholder before ``init()`` has no settings)."""
    try:
        settings = getattr(emitter, "settings", None)
    except Exception:  # the placeholder's __getattr__ says "call init()"
        return False
    return bool(getattr(getattr(settings, "sdk", None), "capture_content", False))


def _bounded(text: str) -> str:
    if len(text) <= TOOL_CONTENT_MAX:
        return text
    return f"{text[:TOOL_CONTENT_MAX]}…[{len(text) - TOOL_CONTENT_MAX} more characters]"


def _record_tool_call(
    span: ActiveSpan,
    emitter: Emitter,
    signature: inspect.Signature | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """``gen_ai.tool.call.id`` / ``.arguments`` of a tool span; never raises into the agent."""
    try:
        bound = _bound_arguments(signature, args, kwargs)
        if bound is None:
            return
        call_id = bound.get(_TOOL_CALL_ID_PARAMETER)
        if isinstance(call_id, str) and call_id:
            span.set_attribute(genai.TOOL_CALL_ID, call_id)
        if _captures_content(emitter):
            span.set_attribute(genai.TOOL_CALL_ARGUMENTS, _bounded(to_json(bound)))
    except Exception:
        warn_once(
            logger, "tool arguments", "agentstream: the arguments of a tool call could not be recorded."
        )


def _record_tool_result(span: ActiveSpan, result: Any) -> None:
    """``gen_ai.tool.call.result``: a string as it is, anything else as JSON (bounded)."""
    try:
        if _captures_content(span.client):
            text = result if isinstance(result, str) else to_json(result)
            span.set_attribute(genai.TOOL_CALL_RESULT, _bounded(text))
    except Exception:
        warn_once(logger, "tool result", "agentstream: the result of a tool call could not be recorded.")
