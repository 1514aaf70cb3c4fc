"""What a ``create`` call asked for, recorded on its span: server, model, sampling parameters,
messages or prompts, tools."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import openai

from agentstream.schemas import genai

from ..tracer import ActiveSpan, to_json

PROVIDER = "openai"
#: The OTel GenAI well-known value for the legacy completions API (genai.py names only chat's).
OPERATION_TEXT_COMPLETION = "text_completion"
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


def given(value: Any) -> bool:
    """Whether the caller passed ``value`` (not ``None``, ``NOT_GIVEN`` or ``omit``)."""
    return value is not None and not isinstance(value, _SENTINELS)


def materialize(kwargs: dict[str, Any], key: str) -> Any:
    """Turn a one-shot iterator argument into a list, so recording it does not consume the request."""
    value = kwargs.get(key)
    if value is None or isinstance(value, (list, tuple)):
        return value
    if isinstance(value, Iterator):
        # Outside any try: an exception here comes from the caller's generator, and the API call
        # would have raised it all the same.
        value = kwargs[key] = list(value)
    return value


def record_server(span: ActiveSpan, resource: Any, operation: str, model: str | None) -> None:
    span.set_attribute(genai.OPERATION_NAME, operation)
    span.set_attribute(genai.PROVIDER_NAME, PROVIDER)
    span.set_attribute(genai.REQUEST_MODEL, model)
    base_url = getattr(getattr(resource, "_client", None), "base_url", None)
    if base_url is not None:
        span.set_attribute(genai.SERVER_ADDRESS, base_url.host or None)
        span.set_attribute("server.port", base_url.port)  # None (not recorded) for the scheme's default


def record_params(span: ActiveSpan, kwargs: Mapping[str, Any]) -> None:
    # Recorded after the content: a caller's odd value failing float()/int() must not cost the messages.
    value: Any  # what the caller passed, of any type: float()/int() say whether it fits
    for key, name in _FLOAT_PARAMS:
        value = kwargs.get(key)
        if given(value):
            span.set_attribute(name, float(value))
    for key, name in _INT_PARAMS:
        value = kwargs.get(key)
        if given(value):
            span.set_attribute(name, int(value))
    max_tokens: Any = kwargs.get("max_completion_tokens")
    if not given(max_tokens):
        max_tokens = kwargs.get("max_tokens")
    if given(max_tokens):
        span.set_attribute(genai.REQUEST_MAX_TOKENS, int(max_tokens))
    stop: Any = kwargs.get("stop")
    if given(stop):
        stop_sequences = [stop] if isinstance(stop, str) else [str(s) for s in stop]
        span.set_attribute(genai.REQUEST_STOP_SEQUENCES, stop_sequences)


def record_chat_request(
    span: ActiveSpan,
    resource: Any,
    kwargs: Mapping[str, Any],
    model: str | None,
    messages: Any,
    tools: Any,
    capture_content: bool,
) -> None:
    record_server(span, resource, genai.OPERATION_CHAT, model)
    if capture_content and given(messages):
        span.set_attribute(genai.INPUT_MESSAGES, to_json(genai.openai_messages_to_otel(messages)))
    if given(tools):
        span.set_attribute(genai.TOOL_DEFINITIONS, to_json([_plain(t) for t in tools]))
    record_params(span, kwargs)


def record_prompts(span: ActiveSpan, texts: list[str]) -> None:
    """A text completion's prompts as user messages, in the same OTel JSON as chat's."""
    messages = [{"role": "user", "content": text} for text in texts]
    span.set_attribute(genai.INPUT_MESSAGES, to_json(genai.openai_messages_to_otel(messages)))


def parse_prompt(prompt: Any) -> tuple[list[str], list[int] | None, int]:
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
