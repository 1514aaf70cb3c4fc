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

Capture never raises into the agent because of agentstream: failures while recording are logged at
debug level. The API's own exceptions are recorded on the span and re-raised untouched.

Limitations: only the first choice's ``token_ids`` are kept (a span holds one response sequence);
``with_streaming_response`` calls record the request only (their body is read later by the caller);
clients made by ``client.with_options()`` / ``copy()`` are not covered by instance instrumentation.

This module imports ``openai``; ``agentstream`` imports it lazily, from :func:`instrument_openai`.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import openai
from openai import AsyncStream, Stream
from openai.resources.chat.completions import AsyncCompletions, Completions
from openai.resources.completions import AsyncCompletions as AsyncTextCompletions
from openai.resources.completions import Completions as TextCompletions

from agentstream.schemas import genai

from .client import AgentStream, default_client
from .tracer import ActiveSpan, _json, now_us

logger = logging.getLogger(__name__)

__all__ = ["instrument_openai", "is_instrumented", "uninstrument_openai"]

# The wrapper keeps a reference to what it wraps: idempotency checks and uninstrumenting read it, so
# they also work on wrappers installed by an earlier import of this module.
_ORIGINAL = "__agentstream_original__"
_PROVIDER = "openai"
# The OTel GenAI well-known value for the legacy completions API (genai.py names only chat's).
_OPERATION_TEXT_COMPLETION = "text_completion"
# Every patched resource class: chat completions, then (legacy) text completions.
_CLASSES: tuple[type, ...] = (Completions, AsyncCompletions, TextCompletions, AsyncTextCompletions)
_ASYNC_CLASSES = (AsyncCompletions, AsyncTextCompletions)
_TEXT_CLASSES = (TextCompletions, AsyncTextCompletions)
_SENTINELS = (openai.NotGiven, openai.Omit)
_FLOAT_PARAMS = (
    ("temperature", genai.REQUEST_TEMPERATURE),
    ("top_p", genai.REQUEST_TOP_P),
    ("frequency_penalty", genai.REQUEST_FREQUENCY_PENALTY),
    ("presence_penalty", genai.REQUEST_PRESENCE_PENALTY),
)
_INT_PARAMS = (
    ("seed", genai.REQUEST_SEED),
    ("n", genai.REQUEST_CHOICE_COUNT),
)

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
            current = cls.__dict__.get("create")
            original = getattr(current, _ORIGINAL, None)
            if original is not None:
                cls.create = original
        for resource in list(_instances):
            _restore_instance(resource)


def is_instrumented(client: Any = None) -> bool:
    """Whether calls of ``client`` (all its resources; or, with ``None``, of every client) are captured."""
    if client is None:
        return all(hasattr(cls.__dict__.get("create"), _ORIGINAL) for cls in _CLASSES)
    return all(
        hasattr(vars(resource).get("create"), _ORIGINAL) or hasattr(type(resource).create, _ORIGINAL)
        for resource in _resources_of(client)
    )


# ---- patching ------------------------------------------------------------------------------------------
def _resources_of(client: Any) -> list[Any]:
    """The completions resources of a client (chat, then text), or the resource itself."""
    if isinstance(client, _CLASSES):
        return [client]
    resources = []
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


# Opens the span of one call and records its request (``_start`` or ``_start_text``).
_Start = Callable[[Any, dict[str, Any]], "_Call | None"]


def _starter(cls: type) -> _Start:
    """What opens the span of a call of ``cls.create``: chat or text completion."""
    return _start_text if issubclass(cls, _TEXT_CLASSES) else _start


def _unwrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    while True:
        inner = getattr(fn, _ORIGINAL, None)
        if inner is None:
            return fn
        fn = inner


def _patch_class(cls: type) -> None:
    current = cls.__dict__["create"]
    if hasattr(current, _ORIGINAL):
        return
    make_wrapper = _async_class_wrapper if issubclass(cls, _ASYNC_CLASSES) else _sync_class_wrapper
    wrapper = make_wrapper(current, _starter(cls))
    setattr(wrapper, _ORIGINAL, current)
    cls.create = wrapper


def _patch_instance(resource: Any) -> None:
    if hasattr(vars(resource).get("create"), _ORIGINAL):
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
    wrapper = vars(resource).get("create")
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


# ---- recording -----------------------------------------------------------------------------------------
def _given(value: Any) -> bool:
    return value is not None and not isinstance(value, _SENTINELS)


def _materialize(kwargs: dict[str, Any], key: str) -> Any:
    """Turn a one-shot iterator argument into a list, so recording it does not consume the request."""
    value = kwargs.get(key)
    if value is None or isinstance(value, (list, tuple)):
        return value
    if isinstance(value, Iterator):
        # Outside any try: an exception here comes from the caller's generator, and the API call
        # would have raised it all the same.
        value = kwargs[key] = list(value)
    return value


def _capture_content(client: Any) -> bool:
    if isinstance(client, AgentStream):
        return bool(client.settings.sdk.capture_content)
    try:
        return bool(client.settings.sdk.capture_content)
    except Exception:  # the unconfigured placeholder raises on any unknown attribute
        return False  # it records nothing, so converting messages would be wasted work


def _open_span(kwargs: Mapping[str, Any], operation: str) -> tuple[ActiveSpan, bool, str | None] | None:
    """The span of one call (``{operation} {model}``), whether content is captured, and the model."""
    try:
        client = default_client()
        capture_content = _capture_content(client)
        model = kwargs.get("model")
        model = model if isinstance(model, str) else None
        span = client.span(f"{operation} {model}" if model else operation, kind="llm")
    except Exception:
        logger.debug("agentstream: cannot start the span of an OpenAI call", exc_info=True)
        return None
    return span, capture_content, model


def _start(resource: Any, kwargs: dict[str, Any]) -> _Call | None:
    """Open the span of one chat call and record the request; ``None`` when capture cannot even start."""
    messages = _materialize(kwargs, "messages")
    tools = _materialize(kwargs, "tools")
    opened = _open_span(kwargs, genai.OPERATION_CHAT)
    if opened is None:
        return None
    span, capture_content, model = opened
    try:
        _record_request(span, resource, kwargs, model, messages, tools, capture_content)
    except Exception:
        logger.debug("agentstream: cannot record an OpenAI request", exc_info=True)
    return _Call(span, capture_content, bool(kwargs.get("stream")))


def _start_text(resource: Any, kwargs: dict[str, Any]) -> _TextCall | None:
    """Open the span of one text-completion call and record the request; ``None`` when capture
    cannot even start."""
    prompt = _materialize(kwargs, "prompt")
    opened = _open_span(kwargs, _OPERATION_TEXT_COMPLETION)
    if opened is None:
        return None
    span, capture_content, model = opened
    call = _TextCall(span, capture_content, bool(kwargs.get("stream")))
    try:
        _record_text_request(call, resource, kwargs, model, prompt)
    except Exception:
        logger.debug("agentstream: cannot record an OpenAI request", exc_info=True)
    return call


def _record_server(span: ActiveSpan, resource: Any, operation: str, model: str | None) -> None:
    span.set_attribute(genai.OPERATION_NAME, operation)
    span.set_attribute(genai.PROVIDER_NAME, _PROVIDER)
    span.set_attribute(genai.REQUEST_MODEL, model)
    base_url = getattr(getattr(resource, "_client", None), "base_url", None)
    if base_url is not None:
        span.set_attribute(genai.SERVER_ADDRESS, base_url.host or None)
        span.set_attribute("server.port", base_url.port)  # None (not recorded) for the scheme's default


def _record_params(span: ActiveSpan, kwargs: Mapping[str, Any]) -> None:
    # Recorded after the content: a caller's odd value failing float()/int() must not cost the messages.
    for key, name in _FLOAT_PARAMS:
        value = kwargs.get(key)
        if _given(value):
            span.set_attribute(name, float(value))
    for key, name in _INT_PARAMS:
        value = kwargs.get(key)
        if _given(value):
            span.set_attribute(name, int(value))
    max_tokens = kwargs.get("max_completion_tokens")
    if not _given(max_tokens):
        max_tokens = kwargs.get("max_tokens")
    if _given(max_tokens):
        span.set_attribute(genai.REQUEST_MAX_TOKENS, int(max_tokens))
    stop = kwargs.get("stop")
    if _given(stop):
        stop_sequences = [stop] if isinstance(stop, str) else [str(s) for s in stop]
        span.set_attribute(genai.REQUEST_STOP_SEQUENCES, stop_sequences)


def _record_request(
    span: ActiveSpan,
    resource: Any,
    kwargs: Mapping[str, Any],
    model: str | None,
    messages: Any,
    tools: Any,
    capture_content: bool,
) -> None:
    _record_server(span, resource, genai.OPERATION_CHAT, model)
    if capture_content and _given(messages):
        span.set_attribute(genai.INPUT_MESSAGES, _json(genai.openai_messages_to_otel(messages)))
    if _given(tools):
        span.set_attribute(genai.TOOL_DEFINITIONS, _json([_plain(t) for t in tools]))
    _record_params(span, kwargs)


def _record_text_request(
    call: _TextCall, resource: Any, kwargs: Mapping[str, Any], model: str | None, prompt: Any
) -> None:
    span = call.span
    _record_server(span, resource, _OPERATION_TEXT_COMPLETION, model)
    texts, prompt_ids, prompt_count = _parse_prompt(prompt)
    call.prompt_count = prompt_count
    call.request_prompt_ids = prompt_ids
    if call.capture_content and texts:
        messages = [{"role": "user", "content": text} for text in texts]
        span.set_attribute(genai.INPUT_MESSAGES, _json(genai.openai_messages_to_otel(messages)))
    n = kwargs.get("n")
    if isinstance(n, int) and n > 0:
        call.choice_count = n
    _record_params(span, kwargs)


def _parse_prompt(prompt: Any) -> tuple[list[str], list[int] | None, int]:
    """A ``completions.create`` prompt as (its texts, the first prompt's token ids, how many prompts).

    The API takes a string, a list of strings, a list of token ids, or a list of such lists.
    """
    if isinstance(prompt, str):
        return [prompt], None, 1
    if not isinstance(prompt, (list, tuple)) or not prompt:
        return [], None, 1
    first = prompt[0]
    if isinstance(first, str):
        return [p if isinstance(p, str) else str(p) for p in prompt], None, len(prompt)
    if isinstance(first, int):
        # A copy: RL loops extend their token list with the response for the next turn, which
        # would otherwise change what this span records before it is encoded.
        return [], list(prompt), 1
    if isinstance(first, (list, tuple)):
        return [], list(first), len(prompt)
    return [], None, 1


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(exclude_none=True) if dump is not None else value


def _extra(obj: Any, name: str) -> Any:
    """A field a server added beyond the OpenAI schema (vLLM's token ids), from attribute or extras."""
    # model_extra first: a missing attribute costs pydantic an AttributeError, on every call.
    extra = getattr(obj, "model_extra", None)
    value = extra.get(name) if extra else None
    if value is None:
        value = getattr(obj, "__dict__", {}).get(name)  # a declared field in a newer openai
    return value


def _token_ids(value: Any) -> list[int] | None:
    # Checked cheaply (type and first element): prompts run to 100k tokens on the hot path, and a
    # wrong shape would otherwise fail the span's Avro encoding on the delivery thread.
    if isinstance(value, list) and value and isinstance(value[0], int):
        return value
    return None


def _tool_call_dict(call: Any) -> dict[str, Any]:
    function = getattr(call, "function", None)
    if function is not None:
        name, arguments = function.name, function.arguments
    else:  # custom (free-form) tools carry ``custom.name`` / ``custom.input``
        custom = getattr(call, "custom", None)
        name, arguments = getattr(custom, "name", None), getattr(custom, "input", None)
    function_dict = {"name": name, "arguments": arguments}
    return {"id": getattr(call, "id", None), "type": "function", "function": function_dict}


def _output_message(message: Any, finish_reason: str | None) -> dict[str, Any]:
    # Reads the few fields the OTel shape needs instead of model_dump()-ing the whole message.
    if message is None:
        converted: dict[str, Any] = {"role": "assistant", "parts": []}
    else:
        as_dict: dict[str, Any] = {"role": getattr(message, "role", None) or "assistant"}
        as_dict["content"] = getattr(message, "content", None)
        refusal = getattr(message, "refusal", None)
        if refusal:
            as_dict["refusal"] = refusal
        tool_calls = getattr(message, "tool_calls", None)
        if tool_calls:
            as_dict["tool_calls"] = [_tool_call_dict(c) for c in tool_calls]
        converted = genai.openai_message_to_otel(as_dict)
    if finish_reason:
        converted["finish_reason"] = finish_reason
    return converted


def _text_output(text: Any, finish_reason: str | None) -> dict[str, Any]:
    """A text completion's choice as the assistant output message, like a chat answer's."""
    converted = genai.openai_message_to_otel({"role": "assistant", "content": text})
    if finish_reason:
        converted["finish_reason"] = finish_reason
    return converted


def _logprob_token_ids(logprobs: Any) -> list[int] | None:
    """Sampled token ids carried by a choice's ``logprobs``, if the server put them there:
    llama.cpp's ``content[].id``, vLLM's ``tokens`` (text) or ``content[].token`` (chat) as
    ``"token_id:123"`` (``--return-tokens-as-token-ids``). Plain OpenAI logprobs hold token strings
    only: ``None``."""
    if logprobs is None:
        return None
    content = _extra(logprobs, "content")
    if isinstance(content, list) and content:
        ids = [e.get("id") if isinstance(e, dict) else _extra(e, "id") for e in content]
        if all(type(i) is int for i in ids):
            return ids
        # vLLM's chat logprobs under --return-tokens-as-token-ids
        tokens = [e.get("token") if isinstance(e, dict) else getattr(e, "token", None) for e in content]
        return _ids_of_token_strings(tokens)
    return _ids_of_token_strings(getattr(logprobs, "tokens", None))


def _ids_of_token_strings(tokens: Any) -> list[int] | None:
    """``["token_id:12", ...]`` as ids; ``None`` for anything else."""
    if (
        isinstance(tokens, list)
        and tokens
        and isinstance(tokens[0], str)
        and tokens[0].startswith("token_id:")
    ):
        try:
            return [int(t[9:]) for t in tokens]
        except (TypeError, ValueError):
            return None
    return None


def _logprob_values(logprobs: Any) -> list[float] | None:
    """The sampled tokens' log-probabilities in a choice's ``logprobs``: ``content[].logprob`` (chat,
    and llama.cpp's text completions), else ``token_logprobs`` (text completions); ``None`` when
    there are none or one is missing (``echo``: the first prompt token has none)."""
    if logprobs is None:
        return None
    content = _extra(logprobs, "content")
    if isinstance(content, list) and content:
        values = [e.get("logprob") if isinstance(e, dict) else getattr(e, "logprob", None) for e in content]
    else:
        values = getattr(logprobs, "token_logprobs", None)
        if not isinstance(values, list) or not values:
            return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    return [float(v) for v in values]


def _response_ids(choice: Any) -> list[int] | None:
    """A choice's (or stream chunk choice's) sampled token ids: vLLM's ``token_ids``, else the ids
    its ``logprobs`` carry."""
    ids = _token_ids(_extra(choice, "token_ids"))
    return ids if ids is not None else _logprob_token_ids(getattr(choice, "logprobs", None))


def _record_usage(span: ActiveSpan, usage: Any) -> None:
    if usage is None:
        return
    span.set_attribute(genai.USAGE_INPUT_TOKENS, getattr(usage, "prompt_tokens", None))
    span.set_attribute(genai.USAGE_OUTPUT_TOKENS, getattr(usage, "completion_tokens", None))
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    if prompt_details is not None:
        span.set_attribute(
            genai.USAGE_CACHE_READ_INPUT_TOKENS, getattr(prompt_details, "cached_tokens", None)
        )
    completion_details = getattr(usage, "completion_tokens_details", None)
    if completion_details is not None:
        span.set_attribute(
            genai.USAGE_REASONING_OUTPUT_TOKENS, getattr(completion_details, "reasoning_tokens", None)
        )


class _Choice:
    """One choice of a stream, aggregated from its deltas."""

    __slots__ = (
        "role",
        "content",
        "refusal",
        "tool_calls",
        "finish_reason",
        "token_ids",
        "logprobs",
        "logprob_gap",
    )

    def __init__(self) -> None:
        self.role: str | None = None
        self.content: list[str] = []
        self.refusal: list[str] = []
        # index -> [id, name, argument pieces]
        self.tool_calls: dict[int, list[Any]] = {}
        self.finish_reason: str | None = None
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.logprob_gap = False  # a chunk's logprobs were missing a value: record none

    def add_logprobs(self, logprobs: Any) -> None:
        if logprobs is None or self.logprob_gap:
            return
        values = _logprob_values(logprobs)
        if values is None:
            self.logprob_gap = bool(_extra(logprobs, "content") or getattr(logprobs, "token_logprobs", None))
            return
        self.logprobs.extend(values)

    def recorded_logprobs(self) -> list[float] | None:
        return self.logprobs if self.logprobs and not self.logprob_gap else None

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role or "assistant", "content": "".join(self.content) or None}
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call[0],
                    "type": "function",
                    "function": {"name": call[1], "arguments": "".join(call[2])},
                }
                for _, call in sorted(self.tool_calls.items())
            ]
        return message


class _Call:
    """The span of one ``create`` call, and for streams what the chunks added up to so far."""

    __slots__ = (
        "span",
        "capture_content",
        "streaming",
        "done",
        "response_id",
        "model",
        "usage",
        "prompt_token_ids",
        "choices",
        "last_chunk_time",
    )

    def __init__(self, span: ActiveSpan, capture_content: bool, streaming: bool) -> None:
        self.span = span
        self.capture_content = capture_content
        self.streaming = streaming
        self.done = False
        self.response_id: str | None = None
        self.model: str | None = None
        self.usage: Any = None
        self.prompt_token_ids: list[int] | None = None
        self.choices: dict[int, _Choice] = {}
        self.last_chunk_time = 0

    # -- non-streaming ------------------------------------------------------------------------------------
    def result(self, result: Any) -> Any:
        """Record what ``create`` returned and end the span, or wrap a stream; returns what to return."""
        if isinstance(result, Stream):
            return self._wrap(_SyncStream, result)
        if isinstance(result, AsyncStream):
            return self._wrap(_AsyncStream, result)
        try:
            completion = result if hasattr(result, "choices") else self._parse_raw(result)
            if completion is not None:
                self._record_completion(completion)
        except Exception:
            logger.debug("agentstream: cannot record an OpenAI response", exc_info=True)
        self._end()
        return result

    def _parse_raw(self, result: Any) -> Any:
        # ``with_raw_response`` returns a LegacyAPIResponse whose parse() is cached, so parsing here
        # costs the caller nothing later. Streams and ``with_streaming_response`` (body not read
        # yet) are left alone: the span keeps the request only.
        if self.streaming or not hasattr(result, "http_response"):
            return None
        if not callable(getattr(result, "parse", None)):
            return None
        parsed = result.parse()
        return parsed if hasattr(parsed, "choices") else None

    def _record_completion(self, completion: Any) -> None:
        span = self.span
        span.set_attribute(genai.RESPONSE_ID, getattr(completion, "id", None))
        span.set_attribute(genai.RESPONSE_MODEL, getattr(completion, "model", None))
        choices = completion.choices or ()
        reasons = [str(c.finish_reason) for c in choices if c.finish_reason]
        span.set_attribute(genai.RESPONSE_FINISH_REASONS, reasons)
        if self.capture_content:
            outputs = [_output_message(getattr(c, "message", None), c.finish_reason) for c in choices]
            span.set_attribute(genai.OUTPUT_MESSAGES, _json(outputs))
        _record_usage(span, getattr(completion, "usage", None))
        prompt_ids = _token_ids(_extra(completion, "prompt_token_ids"))
        response_ids = _response_ids(choices[0]) if choices else None
        logprobs = _logprob_values(getattr(choices[0], "logprobs", None)) if choices else None
        if prompt_ids is not None or response_ids is not None or logprobs is not None:
            span.set_token_ids(prompt=prompt_ids, response=response_ids, response_logprobs=logprobs)

    def fail(self, exc: BaseException) -> None:
        """Record the API call's exception and end the span (the caller re-raises)."""
        try:
            self.span.record_exception(exc)
        except Exception:
            logger.debug("agentstream: cannot record an OpenAI error", exc_info=True)
        self.done = True
        self._end()

    def _end(self, end_time: int | None = None) -> None:
        try:
            self.span.end(end_time)
        except Exception:
            logger.debug("agentstream: cannot end the span of an OpenAI call", exc_info=True)

    # -- streaming ----------------------------------------------------------------------------------------
    def _wrap(self, wrapper: type[_SyncStream] | type[_AsyncStream], stream: Any) -> Any:
        try:
            self.span.set_attribute(genai.STREAMING, True)
            return wrapper(stream, self)
        except Exception:
            logger.debug("agentstream: cannot wrap an OpenAI stream", exc_info=True)
            self._end()
            return stream

    def add_chunk(self, chunk: Any) -> None:
        """Fold one ``ChatCompletionChunk`` into the aggregate. Runs per chunk: keep it lean."""
        try:
            self.last_chunk_time = now_us()
            if self.response_id is None:
                self.response_id = chunk.id
                self.model = chunk.model
            extra = chunk.model_extra
            if extra:
                prompt_ids = extra.get("prompt_token_ids")
                if prompt_ids:
                    self.prompt_token_ids = prompt_ids
            usage = chunk.usage
            if usage is not None:
                self.usage = usage
            content = self.capture_content
            for choice in chunk.choices:
                aggregate = self.choices.get(choice.index)
                if aggregate is None:
                    aggregate = self.choices[choice.index] = _Choice()
                if choice.finish_reason:
                    aggregate.finish_reason = choice.finish_reason
                choice_extra = choice.model_extra
                ids = choice_extra.get("token_ids") if choice_extra else None
                logprobs = choice.logprobs
                if logprobs is not None:
                    if not ids:
                        ids = _logprob_token_ids(logprobs)
                    aggregate.add_logprobs(logprobs)
                if ids:
                    aggregate.token_ids.extend(ids)
                delta = choice.delta
                if not content or delta is None:
                    continue
                if delta.role:
                    aggregate.role = delta.role
                if delta.content:
                    aggregate.content.append(delta.content)
                if delta.refusal:
                    aggregate.refusal.append(delta.refusal)
                if delta.tool_calls:
                    _add_tool_call_deltas(aggregate.tool_calls, delta.tool_calls)
        except Exception:
            logger.debug("agentstream: cannot aggregate an OpenAI stream chunk", exc_info=True)

    def finish_stream(self, exc: BaseException | None = None, *, at_last_chunk: bool = False) -> None:
        """Record the aggregate and end the span (once). ``at_last_chunk``: end when data last came
        (a stream dropped by the garbage collector ends when it was last read, not when collected)."""
        if self.done:
            return
        self.done = True
        try:
            self._record_stream()
        except Exception:
            logger.debug("agentstream: cannot record an OpenAI stream", exc_info=True)
        if exc is not None:
            try:
                self.span.record_exception(exc)
            except Exception:
                logger.debug("agentstream: cannot record an OpenAI stream error", exc_info=True)
        self._end((self.last_chunk_time or None) if at_last_chunk else None)

    def _record_stream(self) -> None:
        span = self.span
        span.set_attribute(genai.RESPONSE_ID, self.response_id)
        span.set_attribute(genai.RESPONSE_MODEL, self.model)
        choices = [self.choices[i] for i in sorted(self.choices)]
        reasons = [c.finish_reason for c in choices if c.finish_reason]
        if reasons:
            span.set_attribute(genai.RESPONSE_FINISH_REASONS, reasons)
        if self.capture_content and choices:
            outputs = []
            for choice in choices:
                converted = genai.openai_message_to_otel(choice.message())
                if choice.finish_reason:
                    converted["finish_reason"] = choice.finish_reason
                outputs.append(converted)
            span.set_attribute(genai.OUTPUT_MESSAGES, _json(outputs))
        _record_usage(span, self.usage)
        prompt_ids = _token_ids(self.prompt_token_ids)
        response_ids = _token_ids(choices[0].token_ids) if choices else None
        logprobs = choices[0].recorded_logprobs() if choices else None
        if prompt_ids is not None or response_ids is not None or logprobs is not None:
            span.set_token_ids(prompt=prompt_ids, response=response_ids, response_logprobs=logprobs)


class _TextCall(_Call):
    """The span of one text-completion ``create`` call (``client.completions``)."""

    __slots__ = ("prompt_count", "choice_count", "request_prompt_ids")

    def __init__(self, span: ActiveSpan, capture_content: bool, streaming: bool) -> None:
        super().__init__(span, capture_content, streaming)
        self.prompt_count = 1  # prompts in the request
        self.choice_count = 1  # choices per prompt (``n``)
        self.request_prompt_ids: list[int] | None = None  # the first prompt, when sent as token ids

    def _first_per_prompt(self, indexed: list[tuple[int, Any]]) -> list[Any]:
        """What becomes the output messages: every choice (index order) for one prompt, as chat
        does with ``n``; the first choice of each prompt (choice ``i * n``) for several."""
        if self.prompt_count > 1:
            return [choice for index, choice in indexed if index % self.choice_count == 0]
        return [choice for _, choice in indexed]

    def _prompt_ids(self, server_ids: Any) -> list[int] | None:
        ids = _token_ids(server_ids)
        return ids if ids is not None else _token_ids(self.request_prompt_ids)

    # -- non-streaming ------------------------------------------------------------------------------------
    def _record_completion(self, completion: Any) -> None:
        span = self.span
        span.set_attribute(genai.RESPONSE_ID, getattr(completion, "id", None))
        span.set_attribute(genai.RESPONSE_MODEL, getattr(completion, "model", None))
        indexed = sorted(
            ((c.index if isinstance(c.index, int) else 0, c) for c in completion.choices or ()),
            key=lambda pair: pair[0],
        )
        reasons = [str(c.finish_reason) for _, c in indexed if c.finish_reason]
        span.set_attribute(genai.RESPONSE_FINISH_REASONS, reasons)
        if self.capture_content:
            outputs = [_text_output(c.text, c.finish_reason) for c in self._first_per_prompt(indexed)]
            span.set_attribute(genai.OUTPUT_MESSAGES, _json(outputs))
        _record_usage(span, getattr(completion, "usage", None))
        first = indexed[0][1] if indexed else None
        # vLLM puts a text completion's prompt ids on each choice; other servers may not
        server_ids = _extra(first, "prompt_token_ids") if first is not None else None
        prompt_ids = self._prompt_ids(server_ids if server_ids else _extra(completion, "prompt_token_ids"))
        response_ids = _response_ids(first) if first is not None else None
        logprobs = _logprob_values(getattr(first, "logprobs", None)) if first is not None else None
        if prompt_ids is not None or response_ids is not None or logprobs is not None:
            span.set_token_ids(prompt=prompt_ids, response=response_ids, response_logprobs=logprobs)

    # -- streaming ----------------------------------------------------------------------------------------
    def add_chunk(self, chunk: Any) -> None:
        """Fold one streamed ``Completion`` into the aggregate. Runs per chunk: keep it lean."""
        try:
            self.last_chunk_time = now_us()
            if self.response_id is None:
                self.response_id = chunk.id
                self.model = chunk.model
            extra = chunk.model_extra
            if extra and self.prompt_token_ids is None:
                prompt_ids = extra.get("prompt_token_ids")
                if prompt_ids:
                    self.prompt_token_ids = prompt_ids
            usage = chunk.usage
            if usage is not None:
                self.usage = usage
            content = self.capture_content
            for choice in chunk.choices:
                index = choice.index if isinstance(choice.index, int) else 0
                aggregate = self.choices.get(index)
                if aggregate is None:
                    aggregate = self.choices[index] = _Choice()
                if choice.finish_reason:
                    aggregate.finish_reason = choice.finish_reason
                choice_extra = choice.model_extra
                ids = None
                if choice_extra:
                    ids = choice_extra.get("token_ids")
                    if index == 0:  # vLLM: on the first chunk of each choice
                        prompt_ids = choice_extra.get("prompt_token_ids")
                        if prompt_ids:
                            self.prompt_token_ids = prompt_ids
                if choice.logprobs is not None:
                    if ids is None:
                        ids = _logprob_token_ids(choice.logprobs)
                    aggregate.add_logprobs(choice.logprobs)
                if ids:
                    aggregate.token_ids.extend(ids)
                if content and choice.text:
                    aggregate.content.append(choice.text)
        except Exception:
            logger.debug("agentstream: cannot aggregate an OpenAI stream chunk", exc_info=True)

    def _record_stream(self) -> None:
        span = self.span
        span.set_attribute(genai.RESPONSE_ID, self.response_id)
        span.set_attribute(genai.RESPONSE_MODEL, self.model)
        indexed = sorted(self.choices.items())
        reasons = [c.finish_reason for _, c in indexed if c.finish_reason]
        if reasons:
            span.set_attribute(genai.RESPONSE_FINISH_REASONS, reasons)
        if self.capture_content and indexed:
            outputs = [
                _text_output("".join(c.content), c.finish_reason) for c in self._first_per_prompt(indexed)
            ]
            span.set_attribute(genai.OUTPUT_MESSAGES, _json(outputs))
        _record_usage(span, self.usage)
        prompt_ids = self._prompt_ids(self.prompt_token_ids)
        response_ids = _token_ids(indexed[0][1].token_ids) if indexed else None
        logprobs = indexed[0][1].recorded_logprobs() if indexed else None
        if prompt_ids is not None or response_ids is not None or logprobs is not None:
            span.set_token_ids(prompt=prompt_ids, response=response_ids, response_logprobs=logprobs)


def _add_tool_call_deltas(calls: dict[int, list[Any]], deltas: Any) -> None:
    for delta in deltas:
        index = getattr(delta, "index", None) or 0
        call = calls.get(index)
        if call is None:
            call = calls[index] = [None, None, []]
        if delta.id and not call[0]:
            call[0] = delta.id  # sent once; servers that repeat it would otherwise duplicate it
        function = delta.function
        if function is None:
            continue
        name = function.name
        if name and name != call[1]:
            # OpenAI sends the name whole, once; some servers stream it in pieces, others repeat it.
            call[1] = name if call[1] is None else call[1] + name
        if function.arguments:
            call[2].append(function.arguments)


class _SyncStream:
    """A ``Stream[ChatCompletionChunk]`` (or ``Stream[Completion]``) seen through: chunks pass
    unchanged, the span ends with it.

    Everything else (``response``, ``_client``, ...) is the wrapped stream's, so helpers such as
    ``client.chat.completions.stream()`` keep working on top of it.
    """

    __slots__ = ("_stream", "_call", "__weakref__")

    def __init__(self, stream: Stream[Any], call: _Call) -> None:
        self._stream = stream
        self._call = call

    def __iter__(self) -> _SyncStream:
        return self

    def __next__(self) -> Any:
        try:
            chunk = self._stream.__next__()
        except StopIteration:
            self._call.finish_stream()
            raise
        except BaseException as exc:
            self._call.finish_stream(exc)
            raise
        self._call.add_chunk(chunk)
        return chunk

    def __enter__(self) -> _SyncStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the response (releasing the connection) and end the span with what was read."""
        try:
            self._stream.close()
        finally:
            self._call.finish_stream()

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # type: ignore[override]
        # isinstance(s, openai.Stream) keeps holding for the caller, as with a proxy.
        return type(self._stream)

    def __getattr__(self, name: str) -> Any:
        if name in _SyncStream.__slots__:  # not yet set (a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self._stream, name)

    def __del__(self) -> None:
        try:
            self._call.finish_stream(at_last_chunk=True)
        except Exception:
            pass  # interpreter shutdown or a half-built wrapper: nothing to report to


class _AsyncStream:
    """An ``AsyncStream[ChatCompletionChunk]`` seen through; see :class:`_SyncStream`."""

    __slots__ = ("_stream", "_call", "__weakref__")

    def __init__(self, stream: AsyncStream[Any], call: _Call) -> None:
        self._stream = stream
        self._call = call

    def __aiter__(self) -> _AsyncStream:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self._call.finish_stream()
            raise
        except BaseException as exc:
            self._call.finish_stream(exc)
            raise
        self._call.add_chunk(chunk)
        return chunk

    async def __aenter__(self) -> _AsyncStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the response (releasing the connection) and end the span with what was read."""
        try:
            await self._stream.close()
        finally:
            self._call.finish_stream()

    async def aclose(self) -> None:
        """Alias of :meth:`close`."""
        await self.close()

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # type: ignore[override]
        # isinstance(s, openai.AsyncStream) keeps holding for the caller, as with a proxy.
        return type(self._stream)

    def __getattr__(self, name: str) -> Any:
        if name in _AsyncStream.__slots__:
            raise AttributeError(name)
        return getattr(self._stream, name)

    def __del__(self) -> None:
        try:
            self._call.finish_stream(at_last_chunk=True)
        except Exception:
            pass
