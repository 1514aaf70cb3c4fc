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

    An exception marks the span failed (with an ``exception`` event) and is re-raised.

    >>> @agentstream.traced(kind="tool")
    ... def lookup_order(order_id: str) -> dict: ...
    """

    def decorate(func: F) -> F:
        span_name = name or func.__qualname__
        signature = inspect.signature(func) if record_args else None

        def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ActiveSpan:
            span = current_emitter().span(span_name, kind=kind)
            if signature is not None:
                bound = signature.bind_partial(*args, **kwargs)
                span.set_attribute("input.value", to_json(dict(bound.arguments)))
            return span

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with start(args, kwargs) as span:
                    result = await func(*args, **kwargs)
                    if record_args:
                        span.set_attribute("output.value", to_json(result))
                    return result

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with start(args, kwargs) as span:
                result = func(*args, **kwargs)
                if record_args:
                    span.set_attribute("output.value", to_json(result))
                return result

        return cast(F, wrapper)

    return decorate(fn) if fn is not None else decorate
