"""OpenAI capture: every ``chat.completions.create`` and ``completions.create`` call becomes an ``llm`` span.

>>> import agentstream
>>> agentstream.init(service_name="support-bot")
>>> agentstream.instrument_openai()          # every OpenAI / AsyncOpenAI client
>>> agentstream.instrument_openai(client)    # or just this one (its chat and text completions)

Spans follow the OpenTelemetry GenAI conventions (``chat {model}``, ``gen_ai.*`` attributes, messages
as JSON in the OTel parts schema). Token ids are kept when an OpenAI-compatible server returns them
(vLLM with ``extra_body={"return_token_ids": True}``: ``prompt_token_ids`` on the completion,
``token_ids`` on each choice), which is what trainers need to learn from the exact tokens sampled.

Text completions, the legacy ``client.completions.create(model=..., prompt=...)`` API that base
(non-chat) models behind vLLM or llama.cpp's server answer, are recorded the same way as
``text_completion {model}`` spans (``gen_ai.operation.name = "text_completion"``). The prompt is
recorded as one user message and the completion text as the assistant output message, in the same
OTel JSON as chat, so the triplet of a text completion reads like that of a one-turn chat:
``genai.otel_messages_to_openai(triplet.prompt_messages) == [{"role": "user", "content": prompt}]``
and the text is the ``content`` of ``otel_messages_to_openai(triplet.response)[0]``. A one-element
list of strings is the same as a string. A request with several prompts records one user message
per prompt and, in the same order, the *first* choice of each prompt as the output messages (choice
``i * n`` answers prompt ``i``), so output ``k`` answers input ``k``; token ids are those of the
first prompt and its first choice. A prompt given as token ids has no text: no input message is
recorded, the ids become the span's prompt token ids unless the server returned its own. Response
token ids come from vLLM's ``token_ids`` (``return_token_ids``; vLLM puts ``prompt_token_ids`` on
each choice here), else from the ids in the logprobs: llama.cpp's ``logprobs.content[].id``, or
vLLM's ``logprobs.tokens`` under ``--return-tokens-as-token-ids`` (``"token_id:123"``).

When the request asked for logprobs (``logprobs=True`` for chat, ``logprobs=N`` for text), the
sampled tokens' log-probabilities become the span's ``response_logprobs`` (chat:
``logprobs.content[].logprob``; text: ``logprobs.token_logprobs``, or llama.cpp's
``logprobs.content[].logprob``), first choice only, one per response token; a list with a gap (no
value for some token) is not recorded. They are a span field, not an attribute: OTel has no
convention for them, and trainers read them next to the token ids. With ``echo=True`` the response is recorded as the server returned it, echoed prompt included;
``suffix`` is not recorded.

Streaming calls return a thin wrapper around ``Stream`` / ``AsyncStream`` that hands every chunk
through unchanged and ends the span when the stream is exhausted, closed, or dropped.

Capture never raises into the agent because of agentstream: a failure while recording is logged
as a WARNING with its reason the first time it happens at each place, and at DEBUG after that. The
API's own exceptions are recorded on the span and re-raised untouched.

Limitations: only the first choice's ``token_ids`` are kept (a span holds one response sequence);
``with_streaming_response`` calls record the request only (their body is read later by the caller);
clients made by ``client.with_options()`` / ``copy()`` are not covered by instance instrumentation.

This package imports ``openai``; ``agentstream`` imports it lazily, from :func:`instrument_openai`.
Here: patching the ``create`` methods; :mod:`.calls` records one call (:mod:`.requests`,
:mod:`.responses`, :mod:`.streams`); :mod:`.failures` reports what could not be recorded.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any

from openai.resources.chat.completions import AsyncCompletions, Completions
from openai.resources.completions import AsyncCompletions as AsyncTextCompletions
from openai.resources.completions import Completions as TextCompletions

from .calls import Call, start_chat, start_text

__all__ = ["instrument_openai", "is_instrumented", "uninstrument_openai"]

# The wrapper keeps a reference to what it wraps: idempotency checks and uninstrumenting read it, so
# they also work on wrappers installed by an earlier import of this module.
_ORIGINAL = "__agentstream_original__"
# The patched method (set through setattr: the resource classes declare it a method).
_CREATE = "create"
# Every patched resource class: chat completions, then (legacy) text completions.
_CLASSES: tuple[type, ...] = (Completions, AsyncCompletions, TextCompletions, AsyncTextCompletions)
_ASYNC_CLASSES = (AsyncCompletions, AsyncTextCompletions)
_TEXT_CLASSES = (TextCompletions, AsyncTextCompletions)

_lock = threading.Lock()
# Resources (``client.chat.completions``, ``client.completions``) wrapped one by one, so
# uninstrument_openai() can undo them.
_instances: weakref.WeakSet[Any] = weakref.WeakSet()


# ---- public API ----------------------------------------------------------------------------------------
def instrument_openai(client: Any = None) -> None:
    """Record OpenAI chat completions and (legacy) text completions as ``llm`` spans.

    Args:
        client: an ``openai.OpenAI`` / ``openai.AsyncOpenAI`` to instrument alone (both its
            ``chat.completions`` and its ``completions``), or one such resource alone; ``None``
            patches ``create`` of the chat and text ``Completions`` / ``AsyncCompletions`` classes
            so every client, existing or future, is captured.

    Calling it again is a no-op; instrumenting a client and the classes never records a call twice.

    Raises:
        TypeError: ``client`` is not an OpenAI client.
    """
    with _lock:
        if client is None:
            for cls in _CLASSES:
                _patch_class(cls)
            return
        for resource in _resources_of(client):
            _patch_instance(resource)


def uninstrument_openai(client: Any = None) -> None:
    """Undo :func:`instrument_openai`.

    Args:
        client: undo only this client's (or resource's) instrumentation; ``None`` restores the
            classes and every client instrumented one by one.
    """
    with _lock:
        if client is not None:
            for resource in _resources_of(client):
                _restore_instance(resource)
            return
        for cls in _CLASSES:
            current = cls.__dict__.get(_CREATE)
            original = getattr(current, _ORIGINAL, None)
            if original is not None:
                setattr(cls, _CREATE, original)
        for resource in list(_instances):
            _restore_instance(resource)


def is_instrumented(client: Any = None) -> bool:
    """Whether calls of ``client`` (all its resources; or, with ``None``, of every client) are captured."""
    if client is None:
        return all(hasattr(cls.__dict__.get(_CREATE), _ORIGINAL) for cls in _CLASSES)
    return all(
        hasattr(vars(resource).get(_CREATE), _ORIGINAL) or hasattr(type(resource).create, _ORIGINAL)
        for resource in _resources_of(client)
    )


# ---- patching ------------------------------------------------------------------------------------------
def _resources_of(client: Any) -> list[Any]:
    """The completions resources of a client (chat, then text), or the resource itself."""
    if isinstance(client, _CLASSES):
        return [client]
    resources: list[Any] = []
    chat = getattr(getattr(client, "chat", None), "completions", None)
    if isinstance(chat, (Completions, AsyncCompletions)):
        resources.append(chat)
    text = getattr(client, "completions", None)
    if isinstance(text, _TEXT_CLASSES):
        resources.append(text)
    if not resources:
        raise TypeError(
            f"instrument_openai: expected an openai.OpenAI or openai.AsyncOpenAI, got {type(client)!r}"
        )
    return resources


# Opens the span of one call and records its request (``start_chat`` or ``start_text``).
_Start = Callable[[Any, dict[str, Any]], Call | None]


def _starter(cls: type) -> _Start:
    """What opens the span of a call of ``cls.create``: chat or text completion."""
    return start_text if issubclass(cls, _TEXT_CLASSES) else start_chat


def _unwrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    while True:
        inner = getattr(fn, _ORIGINAL, None)
        if inner is None:
            return fn
        fn = inner


def _patch_class(cls: type) -> None:
    current = cls.__dict__[_CREATE]
    if hasattr(current, _ORIGINAL):
        return
    make_wrapper = _async_class_wrapper if issubclass(cls, _ASYNC_CLASSES) else _sync_class_wrapper
    wrapper = make_wrapper(current, _starter(cls))
    setattr(wrapper, _ORIGINAL, current)
    setattr(cls, _CREATE, wrapper)


def _patch_instance(resource: Any) -> None:
    if hasattr(vars(resource).get(_CREATE), _ORIGINAL):
        return
    # Bind the class's *unwrapped* create, so that a later (or earlier) class patch does not
    # wrap this call a second time: the instance attribute shadows the class attribute.
    cls = type(resource)
    original = _unwrap(cls.create).__get__(resource, cls)
    if isinstance(resource, _ASYNC_CLASSES):
        wrapper = _async_instance_wrapper(original, resource, _starter(cls))
    else:
        wrapper = _sync_instance_wrapper(original, resource, _starter(cls))
    resource.create = wrapper
    _instances.add(resource)


def _restore_instance(resource: Any) -> None:
    wrapper = vars(resource).get(_CREATE)
    if hasattr(wrapper, _ORIGINAL):
        del resource.create
    _instances.discard(resource)


def _sync_class_wrapper(original: Callable[..., Any], start: _Start) -> Callable[..., Any]:
    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _invoke_sync(start, original, self, (self, *args), kwargs)

    return create


def _async_class_wrapper(original: Callable[..., Any], start: _Start) -> Callable[..., Any]:
    # An ``async def``, so ``inspect.iscoroutinefunction(AsyncCompletions.create)`` stays true.
    @functools.wraps(original)
    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await _invoke_async(start, original, self, (self, *args), kwargs)

    return create


def _sync_instance_wrapper(original: Callable[..., Any], resource: Any, start: _Start) -> Callable[..., Any]:
    @functools.wraps(original)
    def create(*args: Any, **kwargs: Any) -> Any:
        return _invoke_sync(start, original, resource, args, kwargs)

    setattr(create, _ORIGINAL, original)
    return create


def _async_instance_wrapper(original: Callable[..., Any], resource: Any, start: _Start) -> Callable[..., Any]:
    @functools.wraps(original)
    async def create(*args: Any, **kwargs: Any) -> Any:
        return await _invoke_async(start, original, resource, args, kwargs)

    setattr(create, _ORIGINAL, original)
    return create


def _invoke_sync(
    start: _Start, fn: Callable[..., Any], resource: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    call = start(resource, kwargs)
    if call is None:
        return fn(*args, **kwargs)
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        call.fail(exc)
        raise
    return call.result(result)


async def _invoke_async(
    start: _Start, fn: Callable[..., Any], resource: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    call = start(resource, kwargs)
    if call is None:
        return await fn(*args, **kwargs)
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        call.fail(exc)
        raise
    return call.result(result)
