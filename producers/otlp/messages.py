"""Chat messages of a span, wherever its dialect keeps them, in the OTel GenAI parts schema.

``otel_messages`` reads the current conventions (``gen_ai.input.messages`` / ``gen_ai.output.messages``
as JSON or as structured attribute values, or the ``gen_ai.client.inference.operation.details``
event) and the older span events (per-message ``gen_ai.user.message`` ... ``gen_ai.choice``, and
``gen_ai.content.prompt`` / ``gen_ai.content.completion``). ``indexed_messages`` reads flattened
``{prefix}.{N}.{field}`` attributes laid out as a :class:`~.dialect_table.IndexedMessages` says
(OpenLLMetry / AgentOps / Agent Lightning's ``gen_ai.prompt.N.*``, OpenInference's
``llm.input_messages.N.message.*``). Messages in the OpenAI shape are converted with
:func:`agentstream.schemas.genai.openai_message_to_otel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from agentstream.schemas import genai

from . import dialect_table as t
from .decode import OtlpEvent

Messages = list[dict[str, Any]]


def otel_messages(attributes: Mapping[str, Any], events: Sequence[OtlpEvent]) -> tuple[Messages, Messages]:
    """(input, output) messages of the current or older OTel GenAI conventions; ``[]`` when absent."""
    inputs = _otel_list(attributes.get(genai.INPUT_MESSAGES))
    if inputs:
        return inputs, _otel_list(attributes.get(genai.OUTPUT_MESSAGES))
    for event in events:
        if event.name == t.INFERENCE_DETAILS_EVENT:
            inputs = _otel_list(event.attributes.get(genai.INPUT_MESSAGES))
            outputs = _otel_list(event.attributes.get(genai.OUTPUT_MESSAGES))
            if inputs:
                return inputs, outputs
    return _event_messages(events)


def _event_messages(events: Sequence[OtlpEvent]) -> tuple[Messages, Messages]:
    inputs: Messages = []
    outputs: Messages = []
    for event in events:
        a = event.attributes
        if event.name in t.MESSAGE_EVENTS:
            message = {
                "role": a.get("role") or t.MESSAGE_EVENTS[event.name],
                "content": _content(a.get("content")),
            }
            if a.get("tool_calls"):
                message["tool_calls"] = [_openai_tool_call(c) for c in _parsed(a["tool_calls"]) or ()]
            if a.get("id") and message["role"] == "tool":
                message["tool_call_id"] = a["id"]
            inputs.append(genai.openai_message_to_otel(message))
        elif event.name == t.CHOICE_EVENT:
            body = _parsed(a.get("message")) or {}
            if not isinstance(body, dict):
                body = {"content": body}
            message = {"role": body.get("role") or "assistant", "content": _content(body.get("content"))}
            if body.get("tool_calls"):
                message["tool_calls"] = [_openai_tool_call(c) for c in body["tool_calls"]]
            converted = genai.openai_message_to_otel(message)
            if a.get("finish_reason"):
                converted["finish_reason"] = a["finish_reason"]
            outputs.append(converted)
        elif event.name in t.CONTENT_EVENTS:
            key, side = t.CONTENT_EVENTS[event.name]
            parsed = _parsed(a.get(key))
            if isinstance(parsed, list):
                converted_list = _otel_list(parsed)
                (inputs if side == "input" else outputs).extend(converted_list)
    return (inputs, outputs) if inputs else ([], [])


def verbatim(attributes: Mapping[str, Any]) -> bool:
    """Whether the span's message attributes are already OTel JSON strings of the parts schema
    (then they are stored as they came: the hot path of the current conventions)."""
    raw_in = attributes.get(genai.INPUT_MESSAGES)
    raw_out = attributes.get(genai.OUTPUT_MESSAGES, "[]")
    if type(raw_in) is not str or type(raw_out) is not str or genai.SYSTEM_INSTRUCTIONS in attributes:
        return False
    inputs = _parsed(raw_in)
    if not inputs or not _is_parts_list(inputs):
        return False
    outputs = _parsed(raw_out)
    return outputs == [] or _is_parts_list(outputs)


def _is_parts_list(value: Any) -> bool:
    return type(value) is list and all(type(m) is dict and type(m.get("parts")) is list for m in value)


def _otel_list(raw: Any) -> Messages:
    """Messages in the OTel parts schema from a JSON string or structured value; OpenAI-shaped
    messages are converted; anything else gives ``[]``."""
    value = _parsed(raw)
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return []
    out: Messages = []
    for message in value:
        if isinstance(message.get("parts"), list):
            out.append(message)
        elif "content" in message or "tool_calls" in message or "role" in message:
            if isinstance(message.get("tool_calls"), list):
                message = {**message, "tool_calls": [_openai_tool_call(c) for c in message["tool_calls"]]}
            out.append(genai.openai_message_to_otel({**message, "content": _content(message.get("content"))}))
        else:
            return []
    return out


def indexed_messages(attributes: Mapping[str, Any], layout: t.IndexedMessages) -> tuple[Messages, Messages]:
    """(input, output) messages from ``{prefix}.{N}.{field}`` attributes; ``[]`` when absent."""
    inputs = _indexed(attributes, layout.input_prefix, layout)
    outputs = _indexed(attributes, layout.output_prefix, layout)
    return inputs, outputs


def _indexed(attributes: Mapping[str, Any], prefix: str, layout: t.IndexedMessages) -> Messages:
    out: Messages = []
    for fields in _sub_indexed(attributes, prefix):
        message: dict[str, Any] = {
            "role": str(
                fields.get(layout.role) or ("user" if prefix == layout.input_prefix else "assistant")
            ),
            "content": _content(fields.get(layout.content)),
        }
        if layout.contents and message["content"] is None:
            message["content"] = _parts(fields, layout) or None
        calls = _sub_indexed(fields, layout.tool_calls)
        if calls and message["content"] == "":
            message["content"] = None  # a tool-call turn: no empty text part
        if calls:
            message["tool_calls"] = [
                {
                    "id": call.get(layout.tool_call_id),
                    "type": "function",
                    "function": {
                        "name": call.get(layout.tool_call_name),
                        "arguments": call.get(layout.tool_call_arguments),
                    },
                }
                for call in calls
            ]
        if fields.get(layout.tool_call_response_id):
            message["tool_call_id"] = fields[layout.tool_call_response_id]
        if fields.get(layout.name) and layout.name != layout.tool_call_name:
            message["name"] = fields[layout.name]
        converted = genai.openai_message_to_otel(message)
        if layout.finish_reason and fields.get(layout.finish_reason):
            converted["finish_reason"] = fields[layout.finish_reason]
        out.append(converted)
    return out


def _sub_indexed(fields: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    start = prefix + "."
    grouped: dict[int, dict[str, Any]] = {}
    for key, value in fields.items():
        if key.startswith(start):
            index, _, rest = key[len(start) :].partition(".")
            if rest and index.isdigit():
                grouped.setdefault(int(index), {})[rest] = value
    return [grouped[i] for i in sorted(grouped)]


def _parts(fields: Mapping[str, Any], layout: t.IndexedMessages) -> list[dict[str, Any]]:
    """OpenInference multimodal contents as OpenAI content parts."""
    parts: list[dict[str, Any]] = []
    for item in _sub_indexed(fields, layout.contents):
        kind = item.get(layout.part_type)
        if kind == "image" or item.get(layout.part_image):
            parts.append({"type": "image_url", "image_url": {"url": item.get(layout.part_image, "")}})
        else:
            parts.append({"type": "text", "text": item.get(layout.part_text, "")})
    return parts


def _content(raw: Any) -> Any:
    """Message content: text, or a list of OpenAI content parts (OpenLLMetry sends those as JSON)."""
    if isinstance(raw, str) and raw.startswith("[") and raw.endswith("]"):
        parsed = _parsed(raw)
        if isinstance(parsed, list) and parsed and all(isinstance(p, dict) and "type" in p for p in parsed):
            return parsed
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(isinstance(p, dict) and "type" in p for p in raw):
        return raw
    return orjson.dumps(raw).decode()


def _openai_tool_call(call: Any) -> dict[str, Any]:
    """A tool call in the OpenAI shape, from the OpenAI or the flat ``{id, name, arguments}`` shape."""
    if not isinstance(call, dict):
        return {"id": None, "type": "function", "function": {"name": str(call), "arguments": None}}
    if "function" in call:
        return call
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": call.get("name"), "arguments": call.get("arguments")},
    }


def _parsed(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    return raw
