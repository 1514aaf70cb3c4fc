"""Streamed responses: chunks pass through to the caller unchanged while their content is folded
into one aggregate per choice; the call's span ends when the stream does."""

from __future__ import annotations

from typing import Any, Protocol

from openai import AsyncStream as OpenAIAsyncStream
from openai import Stream as OpenAIStream

from .responses import logprob_values, server_field


class StreamCall(Protocol):
    """The call a stream belongs to: it folds each chunk and ends the span with the stream."""

    def add_chunk(self, chunk: Any) -> None: ...

    def finish_stream(self, exc: BaseException | None = None, *, at_last_chunk: bool = False) -> None: ...


class ChoiceAggregate:
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
        values = logprob_values(logprobs)
        if values is None:
            self.logprob_gap = bool(
                server_field(logprobs, "content") or getattr(logprobs, "token_logprobs", None)
            )
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


def add_tool_call_deltas(calls: dict[int, list[Any]], deltas: Any) -> None:
    """Fold streamed tool-call pieces into ``calls`` (index -> [id, name, argument pieces])."""
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


class CapturedStream:
    """A ``Stream[ChatCompletionChunk]`` (or ``Stream[Completion]``) seen through: chunks pass
    unchanged, the span ends with it.

    Everything else (``response``, ``_client``, ...) is the wrapped stream's, so helpers such as
    ``client.chat.completions.stream()`` keep working on top of it.
    """

    __slots__ = ("_stream", "_call", "__weakref__")

    def __init__(self, stream: OpenAIStream[Any], call: StreamCall) -> None:
        self._stream = stream
        self._call = call

    def __iter__(self) -> CapturedStream:
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

    def __enter__(self) -> CapturedStream:
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
    def __class__(self) -> type:
        # isinstance(s, openai.Stream) keeps holding for the caller, as with a proxy.
        return type(self._stream)

    def __getattr__(self, name: str) -> Any:
        if name in CapturedStream.__slots__:  # not yet set (a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self._stream, name)

    def __del__(self) -> None:
        try:
            self._call.finish_stream(at_last_chunk=True)
        except Exception:
            pass  # interpreter shutdown or a half-built wrapper: nothing to report to


class CapturedAsyncStream:
    """An ``AsyncStream[ChatCompletionChunk]`` (or ``AsyncStream[Completion]``) seen through; see
    :class:`CapturedStream`."""

    __slots__ = ("_stream", "_call", "__weakref__")

    def __init__(self, stream: OpenAIAsyncStream[Any], call: StreamCall) -> None:
        self._stream = stream
        self._call = call

    def __aiter__(self) -> CapturedAsyncStream:
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

    async def __aenter__(self) -> CapturedAsyncStream:
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
    def __class__(self) -> type:
        # isinstance(s, openai.AsyncStream) keeps holding for the caller, as with a proxy.
        return type(self._stream)

    def __getattr__(self, name: str) -> Any:
        if name in CapturedAsyncStream.__slots__:
            raise AttributeError(name)
        return getattr(self._stream, name)

    def __del__(self) -> None:
        try:
            self._call.finish_stream(at_last_chunk=True)
        except Exception:
            pass
