"""The OpenAI wire format of the model server: request bodies, errors, responses, logprobs and
server-sent events, shaped as vLLM answers with ``return_token_ids``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from agentstream.schemas import ResourceVersion
from agentstream.serving.generation import Generated

MAX_LOGPROBS = 20


class RequestError(Exception):
    """A request the server refuses, with the OpenAI error shape's fields."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}
        return JSONResponse({"error": error}, status_code=self.status)


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # the OpenAI clients send more than we use

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    return_token_ids: bool = False


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ChatRequest(OpenAIRequest):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[dict[str, Any]] | None = None


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else [s for s in stop if s]


def text_content(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise RequestError(400, f"unsupported message content {type(content).__name__}", param="messages")


@dataclass
class Usage:
    prompt: int = 0
    completion: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        }


def envelope(
    prefix: str, kind: str, model: str, choices: list[dict[str, Any]], usage: Usage
) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage.as_dict(),
    }


def model_card(
    model_id: str, version: ResourceVersion, root: str, parent: str | None = None
) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": version.created_at // 1_000_000,
        "owned_by": "agentstream",
        "root": root,
        "parent": parent,
    }


def prompt_token_lists(tokenizer: Any, prompt: Any) -> list[list[int]]:
    """A completions prompt (text, texts, token ids, lists of token ids) as token id lists."""
    if isinstance(prompt, str):
        return [tokenizer(prompt).input_ids]
    if not prompt:
        raise RequestError(400, "the prompt is empty", param="prompt")
    if isinstance(prompt[0], str):
        return [tokenizer(p).input_ids for p in prompt]
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return [list(p) for p in prompt]


def _piece(tokenizer: Any, token: int) -> str:
    piece: str = tokenizer.decode([token])
    return piece


def completion_logprobs(tokenizer: Any, generated: Generated) -> dict[str, Any]:
    pieces = [_piece(tokenizer, t) for t in generated.token_ids]
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    top = (
        [
            {
                _piece(tokenizer, t): lp
                for t, lp in [(token, generated.logprobs[i]), *generated.top_logprobs[i]]
            }
            for i, token in enumerate(generated.token_ids)
        ]
        if generated.top_logprobs
        else [{} for _ in pieces]
    )
    return {
        "tokens": pieces,
        "token_logprobs": generated.logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer: Any, generated: Generated) -> list[dict[str, Any]]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        piece = _piece(tokenizer, token)
        return {"token": piece, "logprob": logprob, "bytes": list(piece.encode())}

    return [
        {
            **entry(token, generated.logprobs[i]),
            "top_logprobs": [entry(t, lp) for t, lp in generated.top_logprobs[i]]
            if generated.top_logprobs
            else [],
        }
        for i, token in enumerate(generated.token_ids)
    ]


def event_stream(events: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    async def stream() -> AsyncIterator[bytes]:
        for event in events:
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return stream()


def stream_chunks(response: dict[str, Any], chat: bool, include_usage: bool) -> list[dict[str, Any]]:
    """A whole response as stream chunks: one per choice with all of its text, then one that ends
    it (and the usage, when asked for)."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    head = {k: response[k] for k in ("id", "created", "model")} | {"object": kind}
    chunks: list[dict[str, Any]] = []
    for choice in response["choices"]:
        body: dict[str, Any] = {
            "index": choice["index"],
            "logprobs": choice["logprobs"],
            "finish_reason": None,
        }
        if chat:
            body["delta"] = {"role": "assistant", "content": choice["message"]["content"]}
        else:
            body["text"] = choice["text"]
        for extra in ("token_ids", "prompt_token_ids"):
            if extra in choice:
                body[extra] = choice[extra]
        chunk = {**head, "choices": [body]}
        if chat and "prompt_token_ids" in response and not chunks:
            chunk["prompt_token_ids"] = response["prompt_token_ids"]
        chunks.append(chunk)
    for choice in response["choices"]:
        end: dict[str, Any] = {
            "index": choice["index"],
            "logprobs": None,
            "finish_reason": choice["finish_reason"],
        }
        if chat:
            end["delta"] = {}
        else:
            end["text"] = ""
        chunks.append({**head, "choices": [end]})
    if include_usage:
        chunks.append({**head, "choices": [], "usage": response["usage"]})
    return chunks
