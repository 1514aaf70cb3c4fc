"""The OTLP/HTTP receiver: ``POST /v1/traces`` and ``POST /v1/logs`` (OTLP specification 1.x).

* Bodies: ``application/x-protobuf`` (parsed with ``opentelemetry-proto``) or ``application/json``
  (OTLP/JSON), optionally ``Content-Encoding: gzip``; larger than ``otlp.max_body_bytes`` (after
  decompression too): 413.
* The answer comes after Kafka acknowledged the records, in the request's encoding: an
  ``Export*ServiceResponse``, with ``partial_success`` when the normaliser rejected some items (they
  are on the dead-letter topic with the reason).
* Errors carry a ``google.rpc.Status`` body: 400 for an undecodable payload (not retryable), 429 with
  ``Retry-After`` when the ingest is busy, 503 with ``Retry-After`` when Kafka did not acknowledge,
  401 without the bearer token (``otlp.require_token``; the token lives in
  ``<data_dir>/secrets/otlp.token``, compared in constant time, never logged).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentstream.process.secrets import bearer_authorized, ensure_secret, secret_path

from .decode import OtlpDecodeError, logs_from_json, logs_from_proto, spans_from_json, spans_from_proto
from .ingest import IngestBusy, IngestResult, OtlpIngest
from .pool import BrokenProcessPool, IngestPool, Prepared, decode_payload

if TYPE_CHECKING:
    from agentstream.settings import Settings

    from .dialects import Normalised

logger = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
OTLP_TOKEN = "otlp.token"
#: what a 429 / 503 tells the exporter to wait before retrying, in seconds
RETRY_AFTER_SECONDS = 1
_MAX_REASONS = 5


def token_file(settings: Settings) -> Path:
    """The file holding the receiver's bearer token."""
    return settings.otlp.token_file or secret_path(settings.data_dir, OTLP_TOKEN)


def receiver_token(settings: Settings) -> str | None:
    """The bearer token exporters must send (made if missing), or None when ``otlp.require_token``
    is off."""
    return ensure_secret(token_file(settings)) if settings.otlp.require_token else None


@dataclass(frozen=True)
class Signal:
    """What a route receives: traces or logs."""

    name: str  # "traces" | "logs"
    request: type[Message]
    from_proto: Callable[[Any], list[Any]]
    from_json: Callable[[bytes], list[Any]]
    item: str  # the item kind of Rejected for this signal

    def normalise(self, items: list[Any]) -> Normalised:
        from .dialects import normalise_logs, normalise_spans

        return normalise_spans(items) if self.name == "traces" else normalise_logs(items)

    def response(self, result: IngestResult | None, received: int) -> Message:
        """The ``Export*ServiceResponse`` for ``result`` (partial success when items were rejected)."""
        rejected = result.rejected if result is not None else []
        if not rejected:
            return ExportTraceServiceResponse() if self.name == "traces" else ExportLogsServiceResponse()
        count = min(received, sum(r.kind == self.item for r in rejected) or len(rejected))
        reasons = "; ".join(r.reason for r in rejected[:_MAX_REASONS])
        if len(rejected) > _MAX_REASONS:
            reasons += f"; and {len(rejected) - _MAX_REASONS} more (see the dead-letter topic)"
        if self.name == "traces":
            return ExportTraceServiceResponse(
                partial_success=ExportTracePartialSuccess(rejected_spans=count, error_message=reasons)
            )
        return ExportLogsServiceResponse(
            partial_success=ExportLogsPartialSuccess(rejected_log_records=count, error_message=reasons)
        )


TRACES = Signal("traces", ExportTraceServiceRequest, spans_from_proto, spans_from_json, "span")
LOGS = Signal("logs", ExportLogsServiceRequest, logs_from_proto, logs_from_json, "log")


class PayloadError(ValueError):
    """A request body that cannot be used: the message says why; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_body(signal: Signal, body: bytes, content_type: str) -> list[Any]:
    """The neutral items of an OTLP body (protobuf or JSON).

    Raises:
        PayloadError: the body is not a valid request of ``signal``.
    """
    try:
        return decode_payload(signal.name, body, content_type)
    except (DecodeError, OtlpDecodeError, ValueError, TypeError) as e:
        raise PayloadError(f"undecodable OTLP {signal.name} payload: {e}") from e


def gunzip(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing more than ``limit`` bytes of output (a gzip bomb)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise PayloadError(f"bad gzip body: {e}") from e
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadError(f"the decompressed body exceeds {limit} bytes", 413)
    return out


def status_response(status: int, code: int, message: str, content_type: str, **headers: str) -> Response:
    """An error answer with a ``google.rpc.Status`` body in the request's encoding."""
    body = status_pb2.Status(code=code, message=message)
    return _message_response(body, content_type, status, headers)


def _message_response(
    message: Message, content_type: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if content_type == JSON:
        return Response(json_format.MessageToJson(message, indent=None), status, headers, JSON)
    return Response(message.SerializeToString(), status, headers, PROTOBUF)


class OtlpHttpApp:
    """The Starlette app of the receiver, publishing through ``ingest``.

    Args:
        ingest: where records go.
        token: the bearer token requests must carry; None accepts any request.
        max_body_bytes: the largest body, compressed or not.
        ack_timeout: how long a request waits for Kafka's acknowledgement before a 503.
        pool: where requests are decoded, normalised and encoded; default in the event loop.
    """

    def __init__(
        self,
        ingest: OtlpIngest,
        *,
        token: str | None,
        max_body_bytes: int,
        ack_timeout: float,
        pool: IngestPool | None = None,
    ) -> None:
        self.ingest = ingest
        self.pool = pool or IngestPool(ingest.settings, ingest.encoder, 0)
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.ack_timeout = ack_timeout
        #: counters for /metrics: requests per outcome
        self.requests: dict[str, int] = {}
        self.app = Starlette(
            routes=[
                Route("/v1/traces", self._traces, methods=["POST"]),
                Route("/v1/logs", self._logs, methods=["POST"]),
            ]
        )

    async def _traces(self, request: Request) -> Response:
        return await self.export(TRACES, request)

    async def _logs(self, request: Request) -> Response:
        return await self.export(LOGS, request)

    def _count(self, outcome: str) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1

    async def export(self, signal: Signal, request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        answer_as = JSON if content_type == JSON else PROTOBUF
        if not bearer_authorized(request.headers.get("authorization"), self.token):
            self._count("unauthorized")
            return status_response(
                401,
                code_pb2.UNAUTHENTICATED,
                "missing or wrong bearer token",
                answer_as,
                **{"WWW-Authenticate": "Bearer"},
            )
        if content_type not in (PROTOBUF, JSON):
            self._count("bad_request")
            message = f"unsupported Content-Type {content_type!r}: send {PROTOBUF} or {JSON}"
            return status_response(415, code_pb2.INVALID_ARGUMENT, message, answer_as)
        try:
            body = await self._body(request)
        except PayloadError as e:
            self._count("bad_request")
            return status_response(e.status, code_pb2.INVALID_ARGUMENT, str(e), answer_as)
        try:
            prepared: Prepared = await asyncio.wrap_future(self.pool.submit(signal.name, body, content_type))
        except BrokenProcessPool as e:  # a worker died: the exporter retries on a fresh one
            self._count("unavailable")
            logger.warning("OTLP %s request lost its worker process: %s", signal.name, e)
            retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            return status_response(503, code_pb2.UNAVAILABLE, "the ingest worker failed", answer_as, **retry)
        if prepared.encoded is None:
            self._count("bad_request")
            return status_response(400, code_pb2.INVALID_ARGUMENT, str(prepared.error), answer_as)
        try:
            future: Future[IngestResult] = self.ingest.publish_encoded(prepared.encoded)
        except IngestBusy as e:
            self._count("busy")
            retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            return status_response(429, code_pb2.RESOURCE_EXHAUSTED, str(e), answer_as, **retry)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), self.ack_timeout)
        except Exception as e:  # Kafka failed or timed out: the exporter retries, records are idempotent
            self._count("unavailable")
            logger.warning("OTLP %s request not acknowledged by Kafka: %s", signal.name, e)
            retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            message = f"Kafka did not acknowledge the records: {e or type(e).__name__}"
            return status_response(503, code_pb2.UNAVAILABLE, message, answer_as, **retry)
        self._count("partial" if result.rejected else "ok")
        return _message_response(signal.response(result, prepared.received), answer_as)

    async def _body(self, request: Request) -> bytes:
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadError(f"the body exceeds {limit} bytes", 413)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadError(f"the body exceeds {limit} bytes", 413)
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            return gunzip(body, limit)
        if encoding not in ("identity", ""):
            raise PayloadError(f"unsupported Content-Encoding {encoding!r}: send gzip or none", 415)
        return body


__all__ = [
    "JSON",
    "LOGS",
    "OTLP_TOKEN",
    "PROTOBUF",
    "TRACES",
    "OtlpHttpApp",
    "PayloadError",
    "Signal",
    "decode_body",
    "gunzip",
    "receiver_token",
    "status_response",
    "token_file",
]
