"""What a ``create`` call returned, read from the response objects of ``openai`` and of the
OpenAI-compatible servers (vLLM, llama.cpp) that add token ids and logprobs, and recorded on its span."""

from __future__ import annotations

from typing import Any

from agentstream.schemas import genai

from ..tracer import ActiveSpan


def server_field(obj: Any, name: str) -> Any:
    """A field a server added beyond the OpenAI schema (vLLM's token ids), from attribute or extras."""
    # model_extra first: a missing attribute costs pydantic an AttributeError, on every call.
    extras = getattr(obj, "model_extra", None)
    value = extras.get(name) if extras else None
    if value is None:
        value = getattr(obj, "__dict__", {}).get(name)  # a declared field in a newer openai
    return value


def as_token_ids(value: Any) -> list[int] | None:
    """``value`` if it is a list of token ids, else ``None``."""
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


def output_message(message: Any, finish_reason: str | None) -> dict[str, Any]:
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


def text_output(text: Any, finish_reason: str | None) -> dict[str, Any]:
    """A text completion's choice as the assistant output message, like a chat answer's."""
    converted = genai.openai_message_to_otel({"role": "assistant", "content": text})
    if finish_reason:
        converted["finish_reason"] = finish_reason
    return converted


def logprob_token_ids(logprobs: Any) -> list[int] | None:
    """Sampled token ids carried by a choice's ``logprobs``, if the server put them there:
    llama.cpp's ``content[].id``, vLLM's ``tokens`` (text) or ``content[].token`` (chat) as
    ``"token_id:123"`` (``--return-tokens-as-token-ids``). Plain OpenAI logprobs hold token strings
    only: ``None``."""
    if logprobs is None:
        return None
    content = server_field(logprobs, "content")
    if isinstance(content, list) and content:
        ids: list[Any] = [e.get("id") if isinstance(e, dict) else server_field(e, "id") for e in content]
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


def logprob_values(logprobs: Any) -> list[float] | None:
    """The sampled tokens' log-probabilities in a choice's ``logprobs``: ``content[].logprob`` (chat,
    and llama.cpp's text completions), else ``token_logprobs`` (text completions); ``None`` when
    there are none or one is missing (``echo``: the first prompt token has none)."""
    if logprobs is None:
        return None
    values: Any
    content = server_field(logprobs, "content")
    if isinstance(content, list) and content:
        values = [e.get("logprob") if isinstance(e, dict) else getattr(e, "logprob", None) for e in content]
    else:
        values = getattr(logprobs, "token_logprobs", None)
        if not isinstance(values, list) or not values:
            return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    return [float(v) for v in values]


def choice_token_ids(choice: Any) -> list[int] | None:
    """A choice's (or stream chunk choice's) sampled token ids: vLLM's ``token_ids``, else the ids
    its ``logprobs`` carry."""
    ids = as_token_ids(server_field(choice, "token_ids"))
    return ids if ids is not None else logprob_token_ids(getattr(choice, "logprobs", None))


def record_usage(span: ActiveSpan, usage: Any) -> None:
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


def record_token_ids(
    span: ActiveSpan,
    prompt: list[int] | None,
    response: list[int] | None,
    logprobs: list[float] | None,
) -> None:
    """Put the token ids and logprobs found in a response on its span (what is ``None`` stays unset)."""
    if prompt is not None or response is not None or logprobs is not None:
        span.set_token_ids(prompt=prompt, response=response, response_logprobs=logprobs)
