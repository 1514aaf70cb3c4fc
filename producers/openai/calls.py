"""One captured ``create`` call: its span, from the request to the response or the end of its stream.

Chat completions and (legacy) text completions share one :class:`Call`: one way of folding
stream chunks and of ending the span; :class:`TextCall` only reads its request and shapes its
outputs differently (several prompts, choices per prompt, a prompt given as token ids).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openai import AsyncStream, Stream

from agentstream.schemas import genai, now_us

from ..client import AgentStream
from ..sdk import current_emitter
from ..tracer import ActiveSpan, Emitter, to_json
from .failures import capture_failed
from .requests import (
    OPERATION_TEXT_COMPLETION,
    materialize,
    parse_prompt,
    record_chat_request,
    record_params,
    record_prompts,
    record_server,
)
from .responses import (
    as_token_ids,
    choice_token_ids,
    logprob_token_ids,
    logprob_values,
    output_message,
    record_token_ids,
    record_usage,
    server_field,
    text_output,
)
from .streams import CapturedAsyncStream, CapturedStream, ChoiceAggregate, add_tool_call_deltas


def capture_content(emitter: Emitter) -> bool:
    """Whether message contents are recorded: the emitter's ``sdk.capture_content`` setting.

    The placeholder used before ``init()`` records nothing (reading its settings raises an
    ``AttributeError``), so converting messages for it would be wasted work.
    """
    if isinstance(emitter, AgentStream):
        return bool(emitter.settings.sdk.capture_content)
    settings = getattr(emitter, "settings", None)
    return bool(getattr(getattr(settings, "sdk", None), "capture_content", False))


def _open_span(kwargs: Mapping[str, Any], operation: str) -> tuple[ActiveSpan, bool, str | None] | None:
    """The span of one call (``{operation} {model}``), whether content is captured, and the model."""
    try:
        emitter = current_emitter()
        content = capture_content(emitter)
        model = kwargs.get("model")
        model = model if isinstance(model, str) else None
        span = emitter.span(f"{operation} {model}" if model else operation, kind="llm")
    except Exception:
        capture_failed("cannot start the span of an OpenAI call")
        return None
    return span, content, model


def start_chat(resource: Any, kwargs: dict[str, Any]) -> Call | None:
    """Open the span of one chat call and record the request; ``None`` when capture cannot even start."""
    messages = materialize(kwargs, "messages")
    tools = materialize(kwargs, "tools")
    opened = _open_span(kwargs, genai.OPERATION_CHAT)
    if opened is None:
        return None
    span, content, model = opened
    try:
        record_chat_request(span, resource, kwargs, model, messages, tools, content)
    except Exception:
        capture_failed("cannot record an OpenAI chat request")
    return Call(span, content, bool(kwargs.get("stream")))


def start_text(resource: Any, kwargs: dict[str, Any]) -> TextCall | None:
    """Open the span of one text-completion call and record the request; ``None`` when capture
    cannot even start."""
    prompt = materialize(kwargs, "prompt")
    opened = _open_span(kwargs, OPERATION_TEXT_COMPLETION)
    if opened is None:
        return None
    span, content, model = opened
    call = TextCall(span, content, bool(kwargs.get("stream")))
    try:
        call.record_request(resource, kwargs, model, prompt)
    except Exception:
        capture_failed("cannot record an OpenAI text-completion request")
    return call


class Call:
    """The span of one chat ``create`` call, and for streams what the chunks added up to so far."""

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
        self.choices: dict[int, ChoiceAggregate] = {}
        self.last_chunk_time = 0

    # -- the response ---------------------------------------------------------------------------------
    def result(self, result: Any) -> Any:
        """Record what ``create`` returned and end the span, or wrap a stream; returns what to return."""
        if isinstance(result, Stream):
            return self._wrap(CapturedStream, result)
        if isinstance(result, AsyncStream):
            return self._wrap(CapturedAsyncStream, result)
        try:
            completion = result if hasattr(result, "choices") else self._parse_raw(result)
            if completion is not None:
                self._record_completion(completion)
        except Exception:
            capture_failed("cannot record an OpenAI response")
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
            outputs = [output_message(getattr(c, "message", None), c.finish_reason) for c in choices]
            span.set_attribute(genai.OUTPUT_MESSAGES, to_json(outputs))
        record_usage(span, getattr(completion, "usage", None))
        record_token_ids(
            span,
            as_token_ids(server_field(completion, "prompt_token_ids")),
            choice_token_ids(choices[0]) if choices else None,
            logprob_values(getattr(choices[0], "logprobs", None)) if choices else None,
        )

    def fail(self, exc: BaseException) -> None:
        """Record the API call's exception and end the span (the caller re-raises)."""
        try:
            self.span.record_exception(exc)
        except Exception:
            capture_failed("cannot record an OpenAI error")
        self.done = True
        self._end()

    def _end(self, end_time: int | None = None) -> None:
        try:
            self.span.end(end_time)
        except Exception:
            capture_failed("cannot end the span of an OpenAI call")

    # -- streams: one fold for chat and text chunks ------------------------------------------------------
    def _wrap(self, wrapper: type[CapturedStream] | type[CapturedAsyncStream], stream: Any) -> Any:
        try:
            self.span.set_attribute(genai.STREAMING, True)
            return wrapper(stream, self)
        except Exception:
            capture_failed("cannot wrap an OpenAI stream")
            self._end()
            return stream

    def add_chunk(self, chunk: Any) -> None:
        """Fold one streamed ``ChatCompletionChunk`` (or text ``Completion``) into the aggregate.
        Runs per chunk: keep it lean."""
        try:
            self.last_chunk_time = now_us()
            if self.response_id is None:
                self.response_id = chunk.id
                self.model = chunk.model
            chunk_extra = chunk.model_extra
            if chunk_extra:
                self._take_prompt_ids(chunk_extra.get("prompt_token_ids"))
            usage = chunk.usage
            if usage is not None:
                self.usage = usage
            for choice in chunk.choices:
                index = choice.index if isinstance(choice.index, int) else 0
                aggregate = self.choices.get(index)
                if aggregate is None:
                    aggregate = self.choices[index] = ChoiceAggregate()
                if choice.finish_reason:
                    aggregate.finish_reason = choice.finish_reason
                choice_extra = choice.model_extra
                ids = choice_extra.get("token_ids") if choice_extra else None
                logprobs = choice.logprobs
                if logprobs is not None:
                    if not ids:
                        ids = logprob_token_ids(logprobs)
                    aggregate.add_logprobs(logprobs)
                if ids:
                    aggregate.token_ids.extend(ids)
                self._fold_choice(aggregate, choice, index, choice_extra)
        except Exception:
            capture_failed("cannot aggregate an OpenAI stream chunk")

    def _take_prompt_ids(self, ids: Any) -> None:
        """A chunk's ``prompt_token_ids`` (vLLM sends them on the first chunk)."""
        if ids:
            self.prompt_token_ids = ids

    def _fold_choice(self, aggregate: ChoiceAggregate, choice: Any, index: int, choice_extra: Any) -> None:
        """Add a chunk choice's content: a chat delta (role, text, refusal, tool-call pieces)."""
        delta = choice.delta
        if not self.capture_content or delta is None:
            return
        if delta.role:
            aggregate.role = delta.role
        if delta.content:
            aggregate.content.append(delta.content)
        if delta.refusal:
            aggregate.refusal.append(delta.refusal)
        if delta.tool_calls:
            add_tool_call_deltas(aggregate.tool_calls, delta.tool_calls)

    def finish_stream(self, exc: BaseException | None = None, *, at_last_chunk: bool = False) -> None:
        """Record the aggregate and end the span (once). ``at_last_chunk``: end when data last came
        (a stream dropped by the garbage collector ends when it was last read, not when collected)."""
        if self.done:
            return
        self.done = True
        try:
            self._record_stream()
        except Exception:
            capture_failed("cannot record an OpenAI stream")
        if exc is not None:
            try:
                self.span.record_exception(exc)
            except Exception:
                capture_failed("cannot record an OpenAI stream error")
        self._end((self.last_chunk_time or None) if at_last_chunk else None)

    def _record_stream(self) -> None:
        span = self.span
        span.set_attribute(genai.RESPONSE_ID, self.response_id)
        span.set_attribute(genai.RESPONSE_MODEL, self.model)
        indexed = sorted(self.choices.items())
        reasons = [c.finish_reason for _, c in indexed if c.finish_reason]
        if reasons:
            span.set_attribute(genai.RESPONSE_FINISH_REASONS, reasons)
        if self.capture_content and indexed:
            span.set_attribute(genai.OUTPUT_MESSAGES, to_json(self._stream_outputs(indexed)))
        record_usage(span, self.usage)
        first = indexed[0][1] if indexed else None
        record_token_ids(
            span,
            self._prompt_ids(self.prompt_token_ids),
            as_token_ids(first.token_ids) if first is not None else None,
            first.recorded_logprobs() if first is not None else None,
        )

    def _stream_outputs(self, indexed: list[tuple[int, ChoiceAggregate]]) -> list[dict[str, Any]]:
        outputs = []
        for _, choice in indexed:
            converted = genai.openai_message_to_otel(choice.message())
            if choice.finish_reason:
                converted["finish_reason"] = choice.finish_reason
            outputs.append(converted)
        return outputs

    def _prompt_ids(self, server_ids: Any) -> list[int] | None:
        return as_token_ids(server_ids)


class TextCall(Call):
    """The span of one text-completion ``create`` call (``client.completions``)."""

    __slots__ = ("prompt_count", "choice_count", "request_prompt_ids")

    def __init__(self, span: ActiveSpan, capture_content: bool, streaming: bool) -> None:
        super().__init__(span, capture_content, streaming)
        self.prompt_count = 1  # prompts in the request
        self.choice_count = 1  # choices per prompt (``n``)
        self.request_prompt_ids: list[int] | None = None  # the first prompt, when sent as token ids

    def record_request(
        self, resource: Any, kwargs: Mapping[str, Any], model: str | None, prompt: Any
    ) -> None:
        span = self.span
        record_server(span, resource, OPERATION_TEXT_COMPLETION, model)
        texts, prompt_ids, prompt_count = parse_prompt(prompt)
        self.prompt_count = prompt_count
        self.request_prompt_ids = prompt_ids
        if self.capture_content and texts:
            record_prompts(span, texts)
        n = kwargs.get("n")
        if isinstance(n, int) and n > 0:
            self.choice_count = n
        record_params(span, kwargs)

    def _first_per_prompt(self, indexed: list[tuple[int, Any]]) -> list[Any]:
        """What becomes the output messages: every choice (index order) for one prompt, as chat
        does with ``n``; the first choice of each prompt (choice ``i * n``) for several."""
        if self.prompt_count > 1:
            return [choice for index, choice in indexed if index % self.choice_count == 0]
        return [choice for _, choice in indexed]

    def _prompt_ids(self, server_ids: Any) -> list[int] | None:
        ids = as_token_ids(server_ids)
        return ids if ids is not None else as_token_ids(self.request_prompt_ids)

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
            outputs = [text_output(c.text, c.finish_reason) for c in self._first_per_prompt(indexed)]
            span.set_attribute(genai.OUTPUT_MESSAGES, to_json(outputs))
        record_usage(span, getattr(completion, "usage", None))
        first = indexed[0][1] if indexed else None
        # vLLM puts a text completion's prompt ids on each choice; other servers may not
        server_ids = server_field(first, "prompt_token_ids") if first is not None else None
        record_token_ids(
            span,
            self._prompt_ids(server_ids if server_ids else server_field(completion, "prompt_token_ids")),
            choice_token_ids(first) if first is not None else None,
            logprob_values(getattr(first, "logprobs", None)) if first is not None else None,
        )

    # -- streams ----------------------------------------------------------------------------------------
    def _take_prompt_ids(self, ids: Any) -> None:
        if ids and self.prompt_token_ids is None:
            self.prompt_token_ids = ids

    def _fold_choice(self, aggregate: ChoiceAggregate, choice: Any, index: int, choice_extra: Any) -> None:
        """Add a chunk choice's text; vLLM sends the prompt's token ids on the first chunk of each
        choice."""
        if choice_extra and index == 0:
            prompt_ids = choice_extra.get("prompt_token_ids")
            if prompt_ids:
                self.prompt_token_ids = prompt_ids
        if self.capture_content and choice.text:
            aggregate.content.append(choice.text)

    def _stream_outputs(self, indexed: list[tuple[int, ChoiceAggregate]]) -> list[dict[str, Any]]:
        return [text_output("".join(c.content), c.finish_reason) for c in self._first_per_prompt(indexed)]
