"""The OTLP/gRPC receiver: ``TraceService/Export`` and ``LogsService/Export`` (grpcio, with the
servicers generated in ``opentelemetry-proto``).

Same semantics as the HTTP receiver (:mod:`.receiver`): the answer comes once Kafka acknowledged the
records, with ``partial_success`` for rejected items; ``UNAUTHENTICATED`` without the bearer token
(``authorization`` metadata); ``RESOURCE_EXHAUSTED`` with a ``google.rpc.RetryInfo`` detail when the
ingest is busy, ``UNAVAILABLE`` when Kafka did not acknowledge (both retryable for OTLP exporters);
``INVALID_ARGUMENT`` when the request cannot be normalised.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from agentstream.process.secrets import bearer_authorized

from .decode import OtlpDecodeError
from .ingest import IngestBusy, IngestResult, OtlpIngest
from .pool import BrokenProcessPool, IngestPool
from .receiver import LOGS, PROTOBUF, RETRY_AFTER_SECONDS, TRACES, Signal

logger = logging.getLogger(__name__)

_STATUS_DETAILS = "grpc-status-details-bin"


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str, retry: bool = False) -> None:
    """End the call with ``code``; a retryable one carries a RetryInfo detail, as OTLP asks."""
    if retry:
        info = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=RETRY_AFTER_SECONDS))
        detail = AnyMessage()
        detail.Pack(info)
        status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
        context.set_trailing_metadata(((_STATUS_DETAILS, status.SerializeToString()),))
    context.abort(code, message)


class _Exporter:
    """One OTLP service's ``Export``, shared by traces and logs."""

    def __init__(
        self,
        signal: Signal,
        ingest: OtlpIngest,
        token: str | None,
        ack_timeout: float,
        pool: IngestPool | None = None,
    ) -> None:
        self.signal = signal
        self.ingest = ingest
        self.pool = pool
        self.token = token
        self.ack_timeout = ack_timeout
        self.requests: dict[str, int] = {}

    def _count(self, outcome: str) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def Export(self, request: Any, context: grpc.ServicerContext) -> Message:  # noqa: N802 (gRPC's name)
        metadata = dict(context.invocation_metadata())
        if not bearer_authorized(metadata.get("authorization"), self.token):
            self._count("unauthorized")
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if self.pool is not None and self.pool.workers:
            return self._export_in_pool(self.pool, request, context)
        try:
            items = self.signal.from_proto(request)
        except (OtlpDecodeError, ValueError) as e:
            self._count("bad_request")
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"undecodable OTLP {self.signal.name}: {e}")
        try:
            future = self.ingest.publish(self.signal.normalise(items))
        except IngestBusy as e:
            self._count("busy")
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), retry=True)
        return self._answer(future, len(items), context)

    def _export_in_pool(self, pool: IngestPool, request: Any, context: grpc.ServicerContext) -> Message:
        """Export with the decoding, normalising and encoding in a worker process (the request
        travels there serialised: cheaper than the work it hands off)."""
        try:
            submitted = pool.submit(self.signal.name, request.SerializeToString(), PROTOBUF)
            prepared = submitted.result(timeout=self.ack_timeout)
        except (BrokenProcessPool, TimeoutError):
            self._count("unavailable")
            _abort(context, grpc.StatusCode.UNAVAILABLE, "the ingest worker failed", retry=True)
        if prepared.encoded is None:
            self._count("bad_request")
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(prepared.error))
        assert prepared.encoded is not None  # _abort raised otherwise
        try:
            future = self.ingest.publish_encoded(prepared.encoded)
        except IngestBusy as e:
            self._count("busy")
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), retry=True)
        return self._answer(future, prepared.received, context)

    def _answer(self, future: Future[IngestResult], received: int, context: grpc.ServicerContext) -> Message:
        try:
            result = future.result(timeout=self.ack_timeout)
        except Exception as e:  # Kafka failed or timed out: the exporter retries, records are idempotent
            self._count("unavailable")
            logger.warning("OTLP/gRPC %s not acknowledged by Kafka: %s", self.signal.name, e)
            message = f"Kafka did not acknowledge the records: {e or type(e).__name__}"
            _abort(context, grpc.StatusCode.UNAVAILABLE, message, retry=True)
        self._count("partial" if result.rejected else "ok")
        return self.signal.response(result, received)


class _TraceServicer(_Exporter, trace_service_pb2_grpc.TraceServiceServicer):
    pass


class _LogsServicer(_Exporter, logs_service_pb2_grpc.LogsServiceServicer):
    pass


class OtlpGrpcServer:
    """The OTLP/gRPC receiver on ``host:port`` (0 picks a free port: see :attr:`port`).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        ingest: OtlpIngest,
        *,
        host: str,
        port: int,
        token: str | None,
        max_message_bytes: int,
        ack_timeout: float,
        threads: int = 16,
        pool: IngestPool | None = None,
    ) -> None:
        self.traces = _TraceServicer(TRACES, ingest, token, ack_timeout, pool)
        self.logs = _LogsServicer(LOGS, ingest, token, ack_timeout, pool)
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),  # a taken port is an error, not a shared listener
        ]
        self.server = grpc.server(
            ThreadPoolExecutor(threads, thread_name_prefix="otlp-grpc"), options=options
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self.traces, self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self.logs, self.server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self.server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {address} (gRPC): {e}") from e
        if not bound:
            raise OSError(f"cannot listen on {address} (gRPC)")
        self.host = host
        self.port: int = bound

    def start(self) -> OtlpGrpcServer:
        self.server.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Finish in-flight calls (up to ``grace`` seconds) and stop."""
        self.server.stop(grace).wait(grace + 1)

    @property
    def requests(self) -> dict[str, int]:
        """Calls per outcome, both services together."""
        merged = dict(self.traces.requests)
        for outcome, n in self.logs.requests.items():
            merged[outcome] = merged.get(outcome, 0) + n
        return merged


__all__ = ["OtlpGrpcServer"]
