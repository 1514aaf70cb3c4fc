"""OpenTelemetry GenAI semantic conventions: attribute names and the chat-message JSON shape.

Message attributes (``gen_ai.input.messages`` / ``gen_ai.output.messages``) hold JSON in the OTel
parts schema: ``[{"role": "user", "parts": [{"type": "text", "content": "..."}]}]``. The converters
here map OpenAI chat messages into it and back (trainers need the OpenAI shape).
"""

from __future__ import annotations

import json
from typing import Any

# --- attribute names (semantic-conventions gen_ai registry) -----------------------------------------
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_SEED = "gen_ai.request.seed"
REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
TOOL_DEFINITIONS = "gen_ai.tool.definitions"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_CALL_RESULT = "gen_ai.tool.call.result"
CONVERSATION_ID = "gen_ai.conversation.id"
AGENT_NAME = "gen_ai.agent.name"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"

# agentstream's own attributes
STREAMING = "agentstream.streaming"
TRUNCATED = "agentstream.truncated"
TRUNCATED_KEYS = "agentstream.truncated_keys"
MESSAGE_BODY = "agentstream.message.body"
TASK_INPUT = "agentstream.task.input"
#: bool: this LLM call judges (a reward or evaluation): recorded, but no credit and no training data
JUDGE = "agentstream.judge"
#: str: the attribute dialect the OTLP normaliser recognised a span by (see producers/otlp/dialects.py)
DIALECT = "agentstream.dialect"
#: str: why a span that looks like an LLM call gave no call (no messages, unknown dialect, ...)
NO_CALL_REASON = "agentstream.no_call_reason"
#: str: the reward dimension a reward span or evaluation stands for (several per rollout are kept by name)
REWARD_NAME = "agentstream.reward.name"
#: operation names of evaluations (LLM calls inside them are judge calls)
OPERATION_EVALUATE = "evaluate"

OPERATION_CHAT = "chat"
OPERATION_EXECUTE_TOOL = "execute_tool"
OPERATION_INVOKE_AGENT = "invoke_agent"


def _content_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for item in content:  # OpenAI content parts: text, image_url, input_audio, ...
        item = _as_dict(item)
        if item.get("type") == "text":
            parts.append({"type": "text", "content": item.get("text", "")})
        elif item.get("type") == "image_url":
            url = (item.get("image_url") or {}).get("url", "")
            parts.append({"type": "uri", "modality": "image", "uri": url})
        else:
            parts.append({"type": str(item.get("type", "unknown")), "content": item})
    return parts


def _arguments(raw: Any) -> Any:
    """Tool-call arguments as an object when they are a JSON object or array, else verbatim."""
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return raw
        return parsed if isinstance(parsed, (dict, list)) else raw
    return raw


def openai_message_to_otel(message: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI chat message (request or response) as an OTel GenAI message."""
    role = message.get("role", "user")
    parts = _content_parts(message.get("content"))
    if message.get("refusal"):
        parts.append({"type": "refusal", "content": message["refusal"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": function.get("name"),
                "arguments": _arguments(function.get("arguments")),
            }
        )
    if role == "tool":
        if not parts:
            response: Any = ""
        elif len(parts) == 1 and parts[0]["type"] == "text":
            response = parts[0]["content"]
        else:
            response = parts
        parts = [{"type": "tool_call_response", "id": message.get("tool_call_id"), "response": response}]
    result: dict[str, Any] = {"role": role, "parts": parts}
    if message.get("name"):
        result["name"] = message["name"]
    return result


def openai_messages_to_otel(messages: Any) -> list[dict[str, Any]]:
    return [openai_message_to_otel(_as_dict(m)) for m in messages or ()]


def otel_message_to_openai(message: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`openai_message_to_otel` for text and tool-call parts."""
    role = message.get("role", "user")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    result: dict[str, Any] = {"role": role}
    for part in message.get("parts", ()):
        kind = part.get("type")
        if kind == "text":
            texts.append(part.get("content", ""))
        elif kind == "tool_call":
            arguments = part.get("arguments")
            tool_calls.append(
                {
                    "id": part.get("id"),
                    "type": "function",
                    "function": {
                        "name": part.get("name"),
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    },
                }
            )
        elif kind == "tool_call_response":
            result["tool_call_id"] = part.get("id")
            response = part.get("response")
            texts.append(response if isinstance(response, str) else json.dumps(response))
    result["content"] = "".join(texts) if texts or not tool_calls else None
    if tool_calls:
        result["tool_calls"] = tool_calls
    if message.get("name"):
        result["name"] = message["name"]
    return result


def otel_messages_to_openai(messages: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
    parsed: list[dict[str, Any]] = json.loads(messages) if isinstance(messages, str) else messages
    return [otel_message_to_openai(m) for m in parsed]


def _as_dict(message: Any) -> dict[str, Any]:
    if isinstance(message, dict):
        return message
    dump = getattr(message, "model_dump", None)  # openai's pydantic message objects
    if dump is not None:
        dumped: dict[str, Any] = dump(exclude_none=True)
        return dumped
    return dict(message)
