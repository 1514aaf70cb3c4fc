"""OpenAI capture end to end: real openai clients, a canned OpenAI-compatible server, real Kafka.

The server is an ``httpx2.MockTransport`` (openai 3.x is built on httpx2) answering like vLLM:
``prompt_token_ids`` on the completion and ``token_ids`` on each choice when the request asked for
``return_token_ids``, tool calls, usage, and SSE streams. It also answers the legacy text
completions API (``/v1/completions``) like vLLM (``prompt_token_ids`` and ``token_ids`` on each
choice) or, for ``LLAMA_MODEL``, like llama.cpp's server (token ids only inside ``logprobs``).
Spans are checked as they landed in the spans topic, decoded with the shipped Avro schema.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest
from helpers import WorkerProcess, latest_by, read_topic, wait_for

import agentstream
from agentstream.producers import AgentStream
from agentstream.producers.openai import instrument_openai, is_instrumented, uninstrument_openai
from agentstream.schemas import genai
from agentstream.settings import Settings
from agentstream.streams.calls import call_content

pytestmark = pytest.mark.integration

MODEL = "Qwen/Qwen2.5-7B-Instruct"
BASE_URL = "http://vllm.internal:8000/v1"
PROMPT_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13]
TEXT_IDS = [9707, 0, 2585, 646, 358, 1492, 30]
TOOL_IDS = [151657, 198, 4913, 606, 788, 330, 7790, 151658]

ORDER_ARGS = {"order_id": "A-17"}
ARGS_TAIL = 'id": "A-17"}'
SHIPPED = '{"status": "shipped"}'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Find an order by id.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"],
            },
        },
    }
]
MESSAGES = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "Where is my order A-17?"},
]

# text completions (a base model)
BASE_MODEL = "Qwen/Qwen2.5-7B"
LLAMA_MODEL = "qwen2.5-0.5b-q8_0.gguf"  # answered like llama.cpp's server
TEXT_PROMPT = "Q: What is the capital of France?\nA:"
TEXT_PROMPT_IDS = [48, 25, 3555, 374, 279, 6722, 315, 9625, 5267, 32, 25]
SECOND_PROMPT = "Q: What is the capital of Italy?\nA:"
SECOND_PROMPT_IDS = [48, 25, 3555, 374, 279, 6722, 315, 15344, 5267, 32, 25]
ANSWERS = [(" Paris.", [12095, 13]), (" Rome.", [21718, 13])]  # per prompt
STREAM_PIECES = [(" Paris", [12095]), (".", [13])]
TEXT_ANSWER, ANSWER_IDS = ANSWERS[0]


# ---- the canned server --------------------------------------------------------------------------------
class FakeVLLM:
    """Answers ``POST /chat/completions`` the way vLLM does; remembers every request body."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        token_ids = body.get("return_token_ids", False)
        if body.get("tools"):
            message = {
                "role": "assistant",
                "content": None,
                "reasoning_content": None,
                "tool_calls": [
                    {
                        "id": "chatcmpl-tool-9f2c",
                        "type": "function",
                        "function": {"name": "lookup_order", "arguments": '{"order_id": "A-17"}'},
                    }
                ],
            }
            finish, ids = "tool_calls", TOOL_IDS
        else:
            message = {"role": "assistant", "content": "Hello! How can I help?", "tool_calls": []}
            finish, ids = "stop", TEXT_IDS
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }
        if token_ids:
            choice["token_ids"] = ids
        response: dict[str, Any] = {
            "id": "chatcmpl-7c1d2e",
            "object": "chat.completion",
            "created": 1_732_000_000,
            "model": body["model"],
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(PROMPT_IDS),
                "completion_tokens": len(ids),
                "total_tokens": len(PROMPT_IDS) + len(ids),
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }
        if token_ids:
            response["prompt_token_ids"] = PROMPT_IDS
        return response

    def events(self, body: dict[str, Any]) -> list[bytes]:
        """SSE events: role, content deltas, tool-call deltas split mid-arguments, usage, [DONE]."""
        token_ids = body.get("return_token_ids", False)

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = {
                "id": "chatcmpl-s9",
                "object": "chat.completion.chunk",
                "created": 1_732_000_001,
                "model": body["model"],
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(data)}\n\n".encode()

        def choice(delta: dict[str, Any], ids: list[int], finish: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if token_ids:
                out["token_ids"] = ids
            return out

        first_extra = {"prompt_token_ids": PROMPT_IDS} if token_ids else {}
        events = [
            chunk([choice({"role": "assistant", "content": ""}, [])], **first_extra),
            chunk([choice({"content": "Let me "}, [10267, 752])]),
            chunk([choice({"content": "check."}, [1779, 13])]),
            chunk(
                [
                    choice(
                        {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "chatcmpl-tool-1",
                                    "type": "function",
                                    "function": {"name": "lookup_order", "arguments": '{"order_'},
                                }
                            ]
                        },
                        [151657, 198],
                    )
                ]
            ),
            chunk([choice({"tool_calls": [{"index": 0, "function": {"arguments": ARGS_TAIL}}]}, [4913])]),
            chunk([choice({}, [151658], finish="tool_calls")]),
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = len(PROMPT_IDS)
            usage = {"prompt_tokens": prompt, "completion_tokens": 8, "total_tokens": prompt + 8}
            events.append(chunk([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        return events

    # -- text completions (/v1/completions) ---------------------------------------------------------------
    @staticmethod
    def prompts(body: dict[str, Any]) -> list[tuple[str | None, list[int]]]:
        """The request's prompts as (text, token ids) pairs."""
        prompt = body["prompt"]
        known = {TEXT_PROMPT: TEXT_PROMPT_IDS, SECOND_PROMPT: SECOND_PROMPT_IDS}
        if isinstance(prompt, str):
            prompt = [prompt]
        if prompt and isinstance(prompt[0], int):
            prompt = [prompt]
        return [(p, known[p]) if isinstance(p, str) else (None, p) for p in prompt]

    @staticmethod
    def llama_logprobs(ids: list[int], pieces: list[str]) -> dict[str, Any]:
        content = [
            {"id": i, "token": t, "bytes": list(t.encode()), "logprob": -0.25, "top_logprobs": []}
            for i, t in zip(ids, pieces, strict=True)
        ]
        return {"content": content}

    def text_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's answer (ids on each choice with ``return_token_ids``), or llama.cpp's for LLAMA_MODEL."""
        llama = body["model"] == LLAMA_MODEL
        n = body.get("n") or 1
        choices = []
        prompt_tokens = completion_tokens = 0
        for i, (_, prompt_ids) in enumerate(self.prompts(body)):
            prompt_tokens += len(prompt_ids)
            for j in range(n):
                text, ids = ANSWERS[i % len(ANSWERS)]
                if j:
                    text, ids = f"{text} (alt {j})", [*ids, 9000 + j]
                completion_tokens += len(ids)
                choice: dict[str, Any] = {
                    "index": i * n + j,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                if llama:
                    if body.get("logprobs"):
                        pieces = [" Paris", "."] if ids == ANSWER_IDS else [str(t) for t in ids]
                        choice["logprobs"] = self.llama_logprobs(ids, pieces)
                else:
                    choice.update(stop_reason="\n", prompt_logprobs=None)
                    if body.get("return_token_ids"):
                        choice.update(prompt_token_ids=prompt_ids, token_ids=ids)
                choices.append(choice)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        response: dict[str, Any] = {
            "id": "cmpl-3b7e",
            "object": "text_completion",
            "created": 1_732_000_002,
            "model": body["model"],
            "choices": choices,
            "usage": usage,
            "system_fingerprint": "b6123-llama" if llama else None,
        }
        if not llama:
            response["kv_transfer_params"] = None
        return response

    def text_events(self, body: dict[str, Any]) -> list[bytes]:
        """SSE events of one prompt's text: one chunk per token, then usage, then [DONE]."""
        llama = body["model"] == LLAMA_MODEL
        token_ids = body.get("return_token_ids", False)

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = {
                "id": "cmpl-s3",
                "object": "text_completion",
                "created": 1_732_000_003,
                "model": body["model"],
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(data)}\n\n".encode()

        events = []
        for k, (text, ids) in enumerate(STREAM_PIECES):
            finish = "stop" if k == len(STREAM_PIECES) - 1 and not llama else None
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            if llama and body.get("logprobs"):
                choice["logprobs"] = self.llama_logprobs(ids, [text])
            elif not llama:
                choice["stop_reason"] = "\n" if finish else None
                if token_ids:
                    choice["token_ids"] = ids
                    if k == 0:
                        choice["prompt_token_ids"] = TEXT_PROMPT_IDS
            events.append(chunk([choice]))
        if llama:  # llama.cpp ends with an empty text carrying the finish reason
            events.append(chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = len(TEXT_PROMPT_IDS)
            usage = {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2}
            events.append(chunk([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        return events

    def answer(self, request: httpx2.Request) -> tuple[int, dict[str, Any] | list[bytes]]:
        assert request.url.path in ("/v1/chat/completions", "/v1/completions")
        body = json.loads(request.content)
        self.requests.append(body)
        if body["model"] == "broken-model":
            error = {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}
            return 500, {"error": error}
        if request.url.path == "/v1/completions":
            return 200, self.text_events(body) if body.get("stream") else self.text_completion(body)
        if body.get("stream") and body["model"] == "flaky-model":
            events = self.events(body)[:2]
            events.append(b'data: {"error": {"message": "engine died", "type": "internal_error"}}\n\n')
            return 200, events
        if body.get("stream"):
            return 200, self.events(body)
        return 200, self.completion(body)

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        status, payload = self.answer(request)
        if isinstance(payload, dict):
            return httpx2.Response(status, json=payload)

        def body() -> Iterator[bytes]:
            yield from payload

        return httpx2.Response(status, headers={"content-type": "text/event-stream"}, content=body())

    async def async_handler(self, request: httpx2.Request) -> httpx2.Response:
        status, payload = self.answer(request)
        if isinstance(payload, dict):
            return httpx2.Response(status, json=payload)

        async def body() -> AsyncIterator[bytes]:
            for event in payload:
                await asyncio.sleep(0)
                yield event

        return httpx2.Response(status, headers={"content-type": "text/event-stream"}, content=body())


@pytest.fixture
def server() -> FakeVLLM:
    return FakeVLLM()


def sync_client(server: FakeVLLM) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test",
        base_url=BASE_URL,
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(server.handler)),
    )


def async_client(server: FakeVLLM) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="sk-test",
        base_url=BASE_URL,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(server.async_handler)),
    )


@pytest.fixture(autouse=True)
def _uninstrument() -> Iterator[None]:
    yield
    uninstrument_openai()
    assert not is_instrumented()


@pytest.fixture
def sdk(settings: Settings) -> Iterator[AgentStream]:
    client = agentstream.init(settings)
    yield client
    agentstream.shutdown()


def landed(
    sdk: AgentStream, settings: Settings, expected: int, other_records: int = 0
) -> list[dict[str, Any]]:
    """The spans in this test's topic once everything emitted was delivered.

    The SDK's own count of submitted records pins the number exactly (reading stops at
    ``expected``, so a span recorded twice would otherwise go unnoticed).
    """
    assert sdk.flush(10)
    assert sdk.stats.submitted == expected + other_records
    spans = read_topic(settings, settings.topic("spans"), expected=expected)
    assert len(spans) == expected, spans
    return spans


def assert_request(span: dict[str, Any]) -> None:
    attrs = span["attributes"]
    assert span["name"] == f"chat {MODEL}"
    assert span["kind"] == "llm"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["server.address"] == "vllm.internal"
    assert span["int_attributes"]["server.port"] == 8000
    assert json.loads(attrs["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "You are a support agent."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Where is my order A-17?"}]},
    ]


STREAMED_OUTPUT = [
    {
        "role": "assistant",
        "parts": [
            {"type": "text", "content": "Let me check."},
            {"type": "tool_call", "id": "chatcmpl-tool-1", "name": "lookup_order", "arguments": ORDER_ARGS},
        ],
        "finish_reason": "tool_calls",
    }
]


# ---- tests ------------------------------------------------------------------------------------------------
def test_sync_completion_with_token_ids_and_tool_call(
    server: FakeVLLM, sdk: AgentStream, settings: Settings
) -> None:
    instrument_openai()
    client = sync_client(server)

    response = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        temperature=0.7,
        top_p=0.95,
        max_tokens=256,
        seed=7,
        stop=["</answer>", "\n\nUser:"],
        frequency_penalty=0.1,
        presence_penalty=0,
        n=1,
        extra_body={"return_token_ids": True},
    )

    # the caller gets openai's own object, untouched, and the server got the request unchanged
    assert isinstance(response, openai.types.chat.ChatCompletion)
    assert response.choices[0].message.tool_calls[0].function.name == "lookup_order"
    assert server.requests[0]["messages"] == MESSAGES and server.requests[0]["return_token_ids"] is True

    (span,) = landed(sdk, settings, 1)
    assert_request(span)
    attrs, ints, floats = span["attributes"], span["int_attributes"], span["float_attributes"]
    assert span["status"] == "ok" and span["parent_span_id"] is None
    assert floats["gen_ai.request.temperature"] == pytest.approx(0.7)
    assert floats["gen_ai.request.top_p"] == pytest.approx(0.95)
    assert floats["gen_ai.request.frequency_penalty"] == pytest.approx(0.1)
    assert floats["gen_ai.request.presence_penalty"] == 0.0
    assert ints["gen_ai.request.max_tokens"] == 256
    assert ints["gen_ai.request.seed"] == 7
    assert ints["gen_ai.request.choice.count"] == 1
    assert span["array_attributes"]["gen_ai.request.stop_sequences"] == ["</answer>", "\n\nUser:"]
    assert json.loads(attrs["gen_ai.tool.definitions"]) == TOOLS
    assert attrs["gen_ai.response.id"] == "chatcmpl-7c1d2e"
    assert attrs["gen_ai.response.model"] == MODEL
    assert span["array_attributes"]["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert json.loads(attrs["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "id": "chatcmpl-tool-9f2c",
                    "name": "lookup_order",
                    "arguments": ORDER_ARGS,
                }
            ],
            "finish_reason": "tool_calls",
        }
    ]
    assert ints["gen_ai.usage.input_tokens"] == len(PROMPT_IDS)
    assert ints["gen_ai.usage.output_tokens"] == len(TOOL_IDS)
    assert ints["gen_ai.usage.cache_read.input_tokens"] == 4
    assert ints["gen_ai.usage.reasoning.output_tokens"] == 0
    assert span["prompt_token_ids"] == PROMPT_IDS
    assert span["response_token_ids"] == TOOL_IDS
    assert "agentstream.streaming" not in span["bool_attributes"]


def test_async_completion(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()

    async def main() -> Any:
        client = async_client(server)
        return await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_completion_tokens=64, extra_body={"return_token_ids": True}
        )

    response = asyncio.run(main())
    assert response.choices[0].message.content == "Hello! How can I help?"

    (span,) = landed(sdk, settings, 1)
    assert_request(span)
    assert span["status"] == "ok"
    assert span["int_attributes"]["gen_ai.request.max_tokens"] == 64
    assert span["array_attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    assert json.loads(span["attributes"]["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Hello! How can I help?"}],
            "finish_reason": "stop",
        }
    ]
    assert span["prompt_token_ids"] == PROMPT_IDS
    assert span["response_token_ids"] == TEXT_IDS
    assert "gen_ai.tool.definitions" not in span["attributes"]
    assert "gen_ai.request.temperature" not in span["float_attributes"]


def test_sync_stream_is_aggregated(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()
    client = sync_client(server)

    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"return_token_ids": True},
    )
    assert isinstance(stream, openai.Stream)  # still looks like one to the caller
    chunks = list(stream)

    # chunks pass through unchanged: openai's own objects, all of them, in order
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert len(chunks) == 7
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Let me check."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8

    (span,) = landed(sdk, settings, 1)
    assert_request(span)
    attrs, ints = span["attributes"], span["int_attributes"]
    assert span["status"] == "ok"
    assert span["bool_attributes"]["agentstream.streaming"] is True
    assert attrs["gen_ai.response.id"] == "chatcmpl-s9"
    assert attrs["gen_ai.response.model"] == MODEL
    assert span["array_attributes"]["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert json.loads(attrs["gen_ai.output.messages"]) == STREAMED_OUTPUT
    assert ints["gen_ai.usage.input_tokens"] == len(PROMPT_IDS)
    assert ints["gen_ai.usage.output_tokens"] == 8
    assert span["prompt_token_ids"] == PROMPT_IDS
    assert span["response_token_ids"] == [10267, 752, 1779, 13, 151657, 198, 4913, 151658]


def test_sync_stream_context_manager_closed_early(
    server: FakeVLLM, sdk: AgentStream, settings: Settings
) -> None:
    instrument_openai()
    client = sync_client(server)

    with client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as stream:
        first = next(stream)
        second = next(stream)
    assert first.choices[0].delta.role == "assistant" and second.choices[0].delta.content == "Let me "
    assert stream.response.is_closed  # attributes of the wrapped Stream are reachable

    (span,) = landed(sdk, settings, 1)
    assert span["status"] == "ok"
    assert span["bool_attributes"]["agentstream.streaming"] is True
    assert "gen_ai.response.finish_reasons" not in span["array_attributes"]  # cut before the end
    assert json.loads(span["attributes"]["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Let me "}]}
    ]
    assert "gen_ai.usage.input_tokens" not in span["int_attributes"]
    assert span["prompt_token_ids"] == [] and span["response_token_ids"] == []


def test_abandoned_stream_ends_when_collected(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()
    client = sync_client(server)

    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    next(stream)
    del stream
    gc.collect()

    (span,) = landed(sdk, settings, 1)
    assert span["bool_attributes"]["agentstream.streaming"] is True
    assert span["end_time"] >= span["start_time"]


def test_stream_helper_works_on_the_wrapper(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()
    client = sync_client(server)

    with client.chat.completions.stream(model=MODEL, messages=MESSAGES, tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == '{"order_id": "A-17"}'

    (span,) = landed(sdk, settings, 1)
    assert span["bool_attributes"]["agentstream.streaming"] is True
    assert json.loads(span["attributes"]["gen_ai.output.messages"]) == STREAMED_OUTPUT


def test_async_stream_is_aggregated(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()

    async def main() -> list[Any]:
        client = async_client(server)
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"return_token_ids": True},
        )
        assert isinstance(stream, openai.AsyncStream)
        async with stream as chunks_in:
            return [chunk async for chunk in chunks_in]

    chunks = asyncio.run(main())
    assert len(chunks) == 7

    (span,) = landed(sdk, settings, 1)
    assert_request(span)
    assert span["status"] == "ok"
    assert span["bool_attributes"]["agentstream.streaming"] is True
    assert json.loads(span["attributes"]["gen_ai.output.messages"]) == STREAMED_OUTPUT
    assert span["int_attributes"]["gen_ai.usage.output_tokens"] == 8
    assert span["prompt_token_ids"] == PROMPT_IDS
    assert span["response_token_ids"] == [10267, 752, 1779, 13, 151657, 198, 4913, 151658]


def test_api_error_is_recorded_and_propagates(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()
    client = sync_client(server)

    with pytest.raises(openai.InternalServerError, match="CUDA out of memory"):
        client.chat.completions.create(model="broken-model", messages=MESSAGES)

    async def main() -> None:
        await async_client(server).chat.completions.create(model="broken-model", messages=MESSAGES)

    with pytest.raises(openai.InternalServerError):
        asyncio.run(main())

    spans = landed(sdk, settings, 2)
    for span in spans:
        assert span["name"] == "chat broken-model"
        assert span["status"] == "error"
        assert "InternalServerError" in span["error"]
        assert span["attributes"]["error.type"] == "InternalServerError"
        (event,) = span["events"]
        assert event["name"] == "exception"
        assert event["attributes"]["exception.type"] == "InternalServerError"
        assert "CUDA out of memory" in event["attributes"]["exception.message"]
        assert "gen_ai.response.id" not in span["attributes"]


def test_error_mid_stream_is_recorded(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()
    client = sync_client(server)

    seen = []
    with pytest.raises(openai.APIError, match="engine died"):
        for chunk in client.chat.completions.create(model="flaky-model", messages=MESSAGES, stream=True):
            seen.append(chunk)
    assert len(seen) == 2

    (span,) = landed(sdk, settings, 1)
    assert span["status"] == "error"
    assert [e["name"] for e in span["events"]] == ["exception"]
    assert json.loads(span["attributes"]["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Let me "}]}
    ]


def test_second_turn_with_pydantic_messages(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()
    client = sync_client(server)

    first = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    assistant = first.choices[0].message  # openai's pydantic object, sent back as is
    tool_result = {"role": "tool", "tool_call_id": "chatcmpl-tool-9f2c", "content": SHIPPED}
    client.chat.completions.create(model=MODEL, messages=[*MESSAGES, assistant, tool_result])

    spans = sorted(landed(sdk, settings, 2), key=lambda s: s["start_time"])
    assert json.loads(spans[1]["attributes"]["gen_ai.input.messages"])[2:] == [
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "id": "chatcmpl-tool-9f2c",
                    "name": "lookup_order",
                    "arguments": ORDER_ARGS,
                }
            ],
        },
        {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": "chatcmpl-tool-9f2c", "response": SHIPPED}],
        },
    ]


def test_nested_under_rollout_and_step(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    agentstream.instrument_openai()  # the top-level entry point
    client = sync_client(server)

    with agentstream.rollout({"ticket": "A-17"}) as rollout:
        with agentstream.span("agent step") as step:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
            stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        # the stream's span was opened inside the step, so it stays the step's child however late it ends
        for _ in stream:
            pass

    spans = landed(sdk, settings, 4, other_records=2)  # + attempt_started / attempt_finished
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    (root,) = by_name["rollout"]
    (step_span,) = by_name["agent step"]
    llm = by_name[f"chat {MODEL}"]
    assert len(llm) == 2
    assert step_span["span_id"] == step.span_id and step_span["parent_span_id"] == root["span_id"]
    for span in llm:
        assert span["parent_span_id"] == step.span_id
        assert span["rollout_id"] == rollout.rollout_id
        assert span["attempt_id"] == rollout.attempt_id
        assert span["trace_id"] == rollout.trace_id
    assert {s["sequence_id"] for s in spans} == {1, 2, 3, 4}


def test_instance_instrumentation_only_covers_that_client(
    server: FakeVLLM, sdk: AgentStream, settings: Settings
) -> None:
    traced_client, other_client = sync_client(server), sync_client(server)
    instrument_openai(traced_client)
    assert is_instrumented(traced_client) and not is_instrumented(other_client) and not is_instrumented()

    traced_client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=1)
    other_client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0.5)

    (span,) = landed(sdk, settings, 1)
    assert span["float_attributes"]["gen_ai.request.temperature"] == 1.0

    uninstrument_openai(traced_client)
    assert not is_instrumented(traced_client)


def test_instance_then_class_instrumentation_records_once(
    server: FakeVLLM, sdk: AgentStream, settings: Settings
) -> None:
    client = sync_client(server)
    instrument_openai(client)
    instrument_openai()
    instrument_openai(client)

    async def main() -> None:
        aclient = async_client(server)
        instrument_openai(aclient)
        await aclient.chat.completions.create(model=MODEL, messages=MESSAGES)

    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    asyncio.run(main())

    assert len(landed(sdk, settings, 2)) == 2


def test_double_instrumentation_is_idempotent(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    original = openai.resources.chat.completions.Completions.create
    original_async = openai.resources.chat.completions.AsyncCompletions.create
    instrument_openai()
    wrapped = openai.resources.chat.completions.Completions.create
    instrument_openai()
    assert openai.resources.chat.completions.Completions.create is wrapped

    sync_client(server).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert len(landed(sdk, settings, 1)) == 1

    uninstrument_openai()
    assert openai.resources.chat.completions.Completions.create is original
    assert openai.resources.chat.completions.AsyncCompletions.create is original_async


def test_capture_content_off_keeps_messages_out(server: FakeVLLM, settings: Settings) -> None:
    sdk = agentstream.init(settings, sdk=settings.sdk.model_copy(update={"capture_content": False}))
    try:
        instrument_openai()
        client = sync_client(server)
        client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body={"return_token_ids": True})
        for _ in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            pass
        spans = landed(sdk, settings, 2)
    finally:
        agentstream.shutdown()
    for span in spans:
        assert "gen_ai.input.messages" not in span["attributes"]
        assert "gen_ai.output.messages" not in span["attributes"]
        assert span["attributes"]["gen_ai.request.model"] == MODEL
        assert span["array_attributes"]["gen_ai.response.finish_reasons"] in (["stop"], ["tool_calls"])
    assert {tuple(s["prompt_token_ids"]) for s in spans} == {tuple(PROMPT_IDS), ()}


def test_raw_response_is_recorded(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()
    client = sync_client(server)

    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "Hello! How can I help?"

    (span,) = landed(sdk, settings, 1)
    assert span["attributes"]["gen_ai.response.id"] == "chatcmpl-7c1d2e"
    assert span["int_attributes"]["gen_ai.usage.output_tokens"] == len(TEXT_IDS)


def test_generator_messages_reach_the_server(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()
    client = sync_client(server)

    client.chat.completions.create(model=MODEL, messages=(m for m in MESSAGES))

    assert server.requests[0]["messages"] == MESSAGES
    (span,) = landed(sdk, settings, 1)
    assert_request(span)


def test_without_init_calls_still_work(server: FakeVLLM) -> None:
    agentstream.shutdown()
    instrument_openai()
    client = sync_client(server)

    response = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))

    assert response.choices[0].finish_reason == "stop"
    assert len(chunks) == 6
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="broken-model", messages=MESSAGES)


# ---- text completions (client.completions) ------------------------------------------------------------
def user(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"type": "text", "content": text}]}


def assistant(text: str, finish_reason: str | None = "stop") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "parts": [{"type": "text", "content": text}]}
    if finish_reason:
        message["finish_reason"] = finish_reason
    return message


def assert_text_request(span: dict[str, Any], model: str = BASE_MODEL) -> None:
    attrs = span["attributes"]
    assert span["name"] == f"text_completion {model}"
    assert span["kind"] == "llm"
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == model
    assert attrs["server.address"] == "vllm.internal"
    assert span["int_attributes"]["server.port"] == 8000


def test_text_completion_with_token_ids(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()
    client = sync_client(server)

    response = client.completions.create(
        model=BASE_MODEL,
        prompt=TEXT_PROMPT,
        max_tokens=16,
        temperature=0.0,
        top_p=0.9,
        seed=11,
        n=1,
        stop="\n",
        frequency_penalty=0.2,
        extra_body={"return_token_ids": True},
    )

    assert isinstance(response, openai.types.Completion)
    assert response.choices[0].text == TEXT_ANSWER
    assert server.requests[0]["prompt"] == TEXT_PROMPT and server.requests[0]["return_token_ids"] is True

    (span,) = landed(sdk, settings, 1)
    assert_text_request(span)
    attrs, ints, floats = span["attributes"], span["int_attributes"], span["float_attributes"]
    assert span["status"] == "ok"
    assert floats["gen_ai.request.temperature"] == 0.0
    assert floats["gen_ai.request.top_p"] == pytest.approx(0.9)
    assert floats["gen_ai.request.frequency_penalty"] == pytest.approx(0.2)
    assert ints["gen_ai.request.max_tokens"] == 16
    assert ints["gen_ai.request.seed"] == 11
    assert ints["gen_ai.request.choice.count"] == 1
    assert span["array_attributes"]["gen_ai.request.stop_sequences"] == ["\n"]
    assert attrs["gen_ai.response.id"] == "cmpl-3b7e"
    assert attrs["gen_ai.response.model"] == BASE_MODEL
    assert span["array_attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    assert json.loads(attrs["gen_ai.input.messages"]) == [user(TEXT_PROMPT)]
    assert json.loads(attrs["gen_ai.output.messages"]) == [assistant(TEXT_ANSWER)]
    assert ints["gen_ai.usage.input_tokens"] == len(TEXT_PROMPT_IDS)
    assert ints["gen_ai.usage.output_tokens"] == len(ANSWER_IDS)
    assert span["prompt_token_ids"] == TEXT_PROMPT_IDS
    assert span["response_token_ids"] == ANSWER_IDS
    assert "agentstream.streaming" not in span["bool_attributes"]
    assert "gen_ai.tool.definitions" not in attrs

    # what the triplet joiner takes from this span: the prompt as one user message, the text as the answer
    content = call_content(span)
    assert genai.otel_messages_to_openai(content["prompt"]) == [{"role": "user", "content": TEXT_PROMPT}]
    assert genai.otel_messages_to_openai(content["response"]) == [
        {"role": "assistant", "content": TEXT_ANSWER}
    ]
    assert content["prompt_ids"] == TEXT_PROMPT_IDS and content["response_ids"] == ANSWER_IDS
    assert content["model"] == BASE_MODEL


def test_async_text_completion_with_a_one_prompt_list(
    server: FakeVLLM, sdk: AgentStream, settings: Settings
) -> None:
    instrument_openai()

    async def main() -> Any:
        client = async_client(server)
        return await client.completions.create(model=BASE_MODEL, prompt=[TEXT_PROMPT], max_tokens=8)

    response = asyncio.run(main())
    assert response.choices[0].text == TEXT_ANSWER

    (span,) = landed(sdk, settings, 1)
    assert_text_request(span)
    assert span["status"] == "ok"
    assert span["int_attributes"]["gen_ai.request.max_tokens"] == 8
    assert json.loads(span["attributes"]["gen_ai.input.messages"]) == [user(TEXT_PROMPT)]  # as a plain string
    assert json.loads(span["attributes"]["gen_ai.output.messages"]) == [assistant(TEXT_ANSWER)]
    assert span["prompt_token_ids"] == [] and span["response_token_ids"] == []  # not asked for
    assert "gen_ai.request.temperature" not in span["float_attributes"]


def test_text_completion_stream_is_aggregated(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()
    client = sync_client(server)

    stream = client.completions.create(
        model=BASE_MODEL,
        prompt=TEXT_PROMPT,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"return_token_ids": True},
    )
    assert isinstance(stream, openai.Stream)
    chunks = list(stream)

    assert all(isinstance(c, openai.types.Completion) for c in chunks)
    assert len(chunks) == 3
    assert "".join(c.choices[0].text for c in chunks if c.choices) == TEXT_ANSWER
    assert chunks[-1].usage is not None

    (span,) = landed(sdk, settings, 1)
    assert_text_request(span)
    attrs = span["attributes"]
    assert span["status"] == "ok"
    assert span["bool_attributes"]["agentstream.streaming"] is True
    assert attrs["gen_ai.response.id"] == "cmpl-s3"
    assert attrs["gen_ai.response.model"] == BASE_MODEL
    assert span["array_attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    assert json.loads(attrs["gen_ai.input.messages"]) == [user(TEXT_PROMPT)]
    assert json.loads(attrs["gen_ai.output.messages"]) == [assistant(TEXT_ANSWER)]
    assert span["int_attributes"]["gen_ai.usage.input_tokens"] == len(TEXT_PROMPT_IDS)
    assert span["int_attributes"]["gen_ai.usage.output_tokens"] == 2
    assert span["prompt_token_ids"] == TEXT_PROMPT_IDS
    assert span["response_token_ids"] == ANSWER_IDS


def test_async_text_completion_stream_is_aggregated(
    server: FakeVLLM, sdk: AgentStream, settings: Settings
) -> None:
    instrument_openai()

    async def main() -> list[Any]:
        client = async_client(server)
        stream = await client.completions.create(
            model=BASE_MODEL, prompt=TEXT_PROMPT, stream=True, extra_body={"return_token_ids": True}
        )
        assert isinstance(stream, openai.AsyncStream)
        async with stream as chunks_in:
            return [chunk async for chunk in chunks_in]

    chunks = asyncio.run(main())
    assert len(chunks) == 2

    (span,) = landed(sdk, settings, 1)
    assert_text_request(span)
    assert span["status"] == "ok"
    assert span["bool_attributes"]["agentstream.streaming"] is True
    assert json.loads(span["attributes"]["gen_ai.output.messages"]) == [assistant(TEXT_ANSWER)]
    assert "gen_ai.usage.input_tokens" not in span["int_attributes"]  # no include_usage
    assert span["prompt_token_ids"] == TEXT_PROMPT_IDS
    assert span["response_token_ids"] == ANSWER_IDS


def test_llama_cpp_token_ids_come_from_logprobs(
    server: FakeVLLM, sdk: AgentStream, settings: Settings
) -> None:
    instrument_openai()
    client = sync_client(server)

    response = client.completions.create(model=LLAMA_MODEL, prompt=TEXT_PROMPT, logprobs=1)
    assert response.choices[0].logprobs is not None
    chunks = list(client.completions.create(model=LLAMA_MODEL, prompt=TEXT_PROMPT, logprobs=1, stream=True))
    assert len(chunks) == 3
    client.completions.create(model=LLAMA_MODEL, prompt=TEXT_PROMPT)  # no logprobs: no ids

    spans = sorted(landed(sdk, settings, 3), key=lambda s: s["start_time"])
    for span in spans:
        assert_text_request(span, LLAMA_MODEL)
        assert json.loads(span["attributes"]["gen_ai.output.messages"]) == [assistant(TEXT_ANSWER)]
        assert span["array_attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
        assert span["prompt_token_ids"] == []  # llama.cpp does not return them
    assert [s["response_token_ids"] for s in spans] == [ANSWER_IDS, ANSWER_IDS, []]
    assert "gen_ai.response.logprobs" not in spans[0]["attributes"]  # logprobs themselves: not recorded


def test_several_prompts_record_the_first_choice_of_each(
    server: FakeVLLM, sdk: AgentStream, settings: Settings
) -> None:
    instrument_openai()
    client = sync_client(server)

    response = client.completions.create(
        model=BASE_MODEL, prompt=[TEXT_PROMPT, SECOND_PROMPT], n=2, extra_body={"return_token_ids": True}
    )
    assert [c.index for c in response.choices] == [0, 1, 2, 3]

    (span,) = landed(sdk, settings, 1)
    attrs = span["attributes"]
    assert json.loads(attrs["gen_ai.input.messages"]) == [user(TEXT_PROMPT), user(SECOND_PROMPT)]
    # output k answers input k: choices 0 and 2 (n=2 per prompt)
    assert json.loads(attrs["gen_ai.output.messages"]) == [assistant(" Paris."), assistant(" Rome.")]
    assert span["array_attributes"]["gen_ai.response.finish_reasons"] == ["stop"] * 4
    assert span["int_attributes"]["gen_ai.request.choice.count"] == 2
    assert span["prompt_token_ids"] == TEXT_PROMPT_IDS
    assert span["response_token_ids"] == ANSWER_IDS


def test_token_id_prompt_is_the_prompt_token_ids(
    server: FakeVLLM, sdk: AgentStream, settings: Settings
) -> None:
    instrument_openai()
    client = sync_client(server)

    prompt = list(TEXT_PROMPT_IDS)
    client.completions.create(model=BASE_MODEL, prompt=prompt, max_tokens=4)
    prompt.extend(ANSWER_IDS)  # an RL loop growing its context: must not change what was recorded
    client.completions.create(model=BASE_MODEL, prompt=(t for t in TEXT_PROMPT_IDS))  # a generator

    assert server.requests[1]["prompt"] == TEXT_PROMPT_IDS  # the generator still reached the server
    spans = landed(sdk, settings, 2)
    for span in spans:
        assert_text_request(span)
        assert "gen_ai.input.messages" not in span["attributes"]  # no text to record
        assert json.loads(span["attributes"]["gen_ai.output.messages"]) == [assistant(TEXT_ANSWER)]
        assert span["prompt_token_ids"] == TEXT_PROMPT_IDS
        assert span["response_token_ids"] == []


def test_text_completion_errors_are_recorded(server: FakeVLLM, sdk: AgentStream, settings: Settings) -> None:
    instrument_openai()
    client = sync_client(server)

    with pytest.raises(openai.InternalServerError, match="CUDA out of memory"):
        client.completions.create(model="broken-model", prompt=TEXT_PROMPT)

    async def main() -> None:
        await async_client(server).completions.create(model="broken-model", prompt=TEXT_PROMPT, stream=True)

    with pytest.raises(openai.InternalServerError):
        asyncio.run(main())

    spans = landed(sdk, settings, 2)
    for span in spans:
        assert span["name"] == "text_completion broken-model"
        assert span["attributes"]["gen_ai.operation.name"] == "text_completion"
        assert span["status"] == "error"
        assert span["attributes"]["error.type"] == "InternalServerError"
        (event,) = span["events"]
        assert event["name"] == "exception"
        assert "CUDA out of memory" in event["attributes"]["exception.message"]
        assert json.loads(span["attributes"]["gen_ai.input.messages"]) == [user(TEXT_PROMPT)]
        assert "gen_ai.output.messages" not in span["attributes"]


def test_instrumentation_covers_text_completions(
    server: FakeVLLM, sdk: AgentStream, settings: Settings
) -> None:
    text_cls, async_text_cls = (
        openai.resources.completions.Completions,
        openai.resources.completions.AsyncCompletions,
    )
    original, original_async = text_cls.create, async_text_cls.create
    client = sync_client(server)

    # one client: both its chat and its text completions
    instrument_openai(client)
    assert is_instrumented(client) and is_instrumented(client.completions) and not is_instrumented()
    assert not is_instrumented(sync_client(server))
    client.completions.create(model=BASE_MODEL, prompt=TEXT_PROMPT)  # 1
    client.chat.completions.create(model=MODEL, messages=MESSAGES)  # 2
    uninstrument_openai(client)
    assert not is_instrumented(client) and not is_instrumented(client.completions)
    client.completions.create(model=BASE_MODEL, prompt=TEXT_PROMPT)  # not recorded

    # one resource alone
    instrument_openai(client.completions)
    assert is_instrumented(client.completions) and not is_instrumented(client.chat.completions)
    assert not is_instrumented(client)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)  # not recorded
    client.completions.create(model=BASE_MODEL, prompt=TEXT_PROMPT)  # 3

    # the classes, on top of the instance: idempotent, and still one span per call
    instrument_openai()
    wrapped = text_cls.create
    instrument_openai()
    instrument_openai(client)
    assert text_cls.create is wrapped and is_instrumented() and is_instrumented(client)
    assert asyncio.iscoroutinefunction(async_text_cls.create)
    client.completions.create(model=BASE_MODEL, prompt=TEXT_PROMPT)  # 4

    async def main() -> None:
        await async_client(server).completions.create(model=BASE_MODEL, prompt=TEXT_PROMPT)  # 5

    asyncio.run(main())

    uninstrument_openai()
    assert text_cls.create is original and async_text_cls.create is original_async
    assert not is_instrumented(client) and not is_instrumented(client.completions)
    client.completions.create(model=BASE_MODEL, prompt=TEXT_PROMPT)  # not recorded

    spans = landed(sdk, settings, 5)
    assert sorted(s["name"] for s in spans) == [f"chat {MODEL}"] + [f"text_completion {BASE_MODEL}"] * 4


def test_text_completion_raw_response_is_recorded(
    server: FakeVLLM, sdk: AgentStream, settings: Settings
) -> None:
    instrument_openai()
    client = sync_client(server)

    raw = client.completions.with_raw_response.create(model=BASE_MODEL, prompt=TEXT_PROMPT)
    assert raw.parse().choices[0].text == TEXT_ANSWER

    (span,) = landed(sdk, settings, 1)
    assert span["attributes"]["gen_ai.response.id"] == "cmpl-3b7e"
    assert json.loads(span["attributes"]["gen_ai.output.messages"]) == [assistant(TEXT_ANSWER)]


def test_text_completion_capture_content_off(server: FakeVLLM, settings: Settings) -> None:
    sdk = agentstream.init(settings, sdk=settings.sdk.model_copy(update={"capture_content": False}))
    try:
        instrument_openai()
        client = sync_client(server)
        client.completions.create(model=BASE_MODEL, prompt=TEXT_PROMPT, extra_body={"return_token_ids": True})
        for _ in client.completions.create(model=BASE_MODEL, prompt=TEXT_PROMPT, stream=True):
            pass
        spans = landed(sdk, settings, 2)
    finally:
        agentstream.shutdown()
    for span in spans:
        assert "gen_ai.input.messages" not in span["attributes"]
        assert "gen_ai.output.messages" not in span["attributes"]
        assert span["array_attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    assert {tuple(s["response_token_ids"]) for s in spans} == {tuple(ANSWER_IDS), ()}


def test_text_completion_becomes_a_triplet(server: FakeVLLM, settings: Settings) -> None:
    """Through the stream worker: the triplet's prompt is the prompt as one user message, its response the text."""
    fast = settings.model_copy(
        update={
            "streams": settings.streams.model_copy(
                update={
                    "session_timeout_ms": 2_000,
                    "heartbeat_interval_ms": 400,
                    "commit_interval_seconds": 0.5,
                }
            )
        }
    )
    worker = WorkerProcess(fast).start()
    sdk = agentstream.init(fast)
    try:
        worker.wait_ready()
        instrument_openai()
        client = sync_client(server)
        with agentstream.rollout({"question": "capital of France"}) as rollout:
            completion = client.completions.create(
                model=BASE_MODEL, prompt=TEXT_PROMPT, max_tokens=8, extra_body={"return_token_ids": True}
            )
            agentstream.emit_reward(1.0, response_id=completion.id)
        assert sdk.flush(10)

        def rewarded() -> Any:
            triplets = read_topic(fast, fast.topic("triplets"), timeout=2)
            live = [
                t for t in latest_by(triplets, "triplet_id", "version").values() if t["reward"] is not None
            ]
            return live or None

        live = wait_for(rewarded, timeout=60)
        assert live, f"no triplet:\n{worker.log.read_text()[-3000:]}"
    finally:
        agentstream.shutdown()
        worker.stop()
    (triplet,) = live
    assert triplet["rollout_id"] == rollout.rollout_id and triplet["reward"] == 1.0
    assert json.loads(triplet["prompt_messages"]) == [user(TEXT_PROMPT)]
    assert genai.otel_messages_to_openai(triplet["prompt_messages"]) == [
        {"role": "user", "content": TEXT_PROMPT}
    ]
    assert genai.otel_messages_to_openai(triplet["response"]) == [
        {"role": "assistant", "content": TEXT_ANSWER}
    ]
    assert triplet["prompt_token_ids"] == TEXT_PROMPT_IDS
    assert triplet["response_token_ids"] == ANSWER_IDS
    assert triplet["model"] == BASE_MODEL
