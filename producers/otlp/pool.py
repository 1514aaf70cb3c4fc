"""Worker processes for the CPU-bound part of the ingest: OTLP payload -> encoded Kafka records.

Decoding, normalising and Avro-encoding a request costs tens of microseconds per span, all of it
Python holding the GIL. :class:`IngestPool` runs that part, :func:`prepare`, a pure function from
(signal, payload bytes, content type) to the encoded records and rejected items, in
``otlp.workers`` processes, so the receiver's process only speaks HTTP/gRPC, reads the Collector
topics and produces. ``workers=0`` runs it in the calling thread (tests, small deployments).

The workers are spawned (never forked: the parent runs librdkafka threads) and get only what
encoding needs: a copy of the settings without the Kafka client properties and the ClickHouse DSN,
and an environment without ``AGENTSTREAM_*`` variables (removed as each worker starts). A worker
that dies breaks the executor (``BrokenProcessPool``): the requests it held fail (the receivers
answer 503 with a retry hint) and the next request gets a fresh executor.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .decode import logs_from_json, logs_from_proto, spans_from_json, spans_from_proto
from .dialects import normalise_logs, normalise_spans
from .ingest import Encoded, encode_batch, make_encoder

if TYPE_CHECKING:
    from agentstream.settings import Settings

    from .ingest import _Encoder

__all__ = ["BrokenProcessPool", "IngestPool", "Prepared", "decode_payload", "default_workers", "prepare"]


@dataclass(slots=True)
class Prepared:
    """A request made ready for Kafka; ``error`` (the payload is undecodable) leaves ``encoded`` None."""

    encoded: Encoded | None
    received: int  # spans / log records in the payload
    error: str | None = None


PROTOBUF = "application/x-protobuf"


def decode_payload(signal: str, body: bytes, content_type: str) -> list[Any]:
    """The neutral items of an OTLP ``signal`` ("traces" or "logs") body, protobuf when
    ``content_type`` says so, else OTLP/JSON.

    Raises:
        ValueError: the body is not a valid request (``DecodeError``, ``OtlpDecodeError``, ...).
    """
    if signal == "traces":
        if content_type == PROTOBUF:
            return spans_from_proto(ExportTraceServiceRequest.FromString(body))
        return spans_from_json(body)
    if content_type == PROTOBUF:
        return logs_from_proto(ExportLogsServiceRequest.FromString(body))
    return logs_from_json(body)


def prepare(encoder: _Encoder, signal: str, body: bytes, content_type: str) -> Prepared:
    """Decode ``body`` (an OTLP ``signal`` payload: "traces" or "logs"), normalise and encode it."""
    try:
        items = decode_payload(signal, body, content_type)
    except (DecodeError, ValueError, TypeError) as e:
        return Prepared(None, 0, f"undecodable OTLP {signal} payload: {e}")
    normalised = normalise_spans(items) if signal == "traces" else normalise_logs(items)
    return Prepared(encode_batch(encoder, normalised), len(items))


def default_workers() -> int:
    """``otlp.workers``' default: two worker processes, fewer on a one-core machine."""
    return min(2, os.cpu_count() or 1)


_WORKER_ENCODER: Any = None  # the worker process's encoder (set by its initializer)


def _init_worker(settings: Settings) -> None:
    for name in [k for k in os.environ if k.startswith("AGENTSTREAM_")]:
        del os.environ[name]  # nothing a worker starts inherits the deployment's settings
    global _WORKER_ENCODER
    _WORKER_ENCODER = make_encoder(settings)


def _prepare_in_worker(signal: str, body: bytes, content_type: str) -> Prepared:
    return prepare(_WORKER_ENCODER, signal, body, content_type)


def worker_settings(settings: Settings) -> Settings:
    """What a worker gets: the settings without client credentials it does not need."""
    return settings.model_copy(update={"kafka": {}, "clickhouse_dsn": None})


class IngestPool:
    """Prepares requests in ``workers`` processes (0: in the calling thread with ``encoder``).

    Args:
        settings: resolved settings (for the workers' encoders).
        encoder: the encoder used when ``workers`` is 0 (the ingest's own).
        workers: worker processes; 0 prepares in the caller.
    """

    def __init__(self, settings: Settings, encoder: _Encoder, workers: int) -> None:
        self.workers = workers
        self._encoder = encoder
        self._settings = worker_settings(settings) if workers else settings
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = self._start() if workers else None
        self._closed = False
        #: how often a broken executor was replaced (a worker died)
        self.restarts = 0

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._settings,),
        )

    def warm_up(self) -> None:
        """Start every worker now (imports take seconds), not on the first requests."""
        if self._executor is not None:
            futures = [self.submit("traces", b"", PROTOBUF) for _ in range(self.workers)]
            for future in futures:
                future.result(timeout=120)

    def submit(self, signal: str, body: bytes, content_type: str) -> Future[Prepared]:
        """:func:`prepare` of the request, in a worker; the future fails with ``BrokenProcessPool``
        when the worker died (the pool is then replaced for later requests)."""
        executor = self._executor
        if executor is None and self.workers:
            raise BrokenProcessPool("the ingest's worker pool is shut down")
        if executor is None:
            future: Future[Prepared] = Future()
            try:
                future.set_result(prepare(self._encoder, signal, body, content_type))
            except Exception as e:  # noqa: BLE001 - the caller's future carries it
                future.set_exception(e)
            return future
        try:
            submitted = executor.submit(_prepare_in_worker, signal, body, content_type)
        except BrokenProcessPool:
            self._replace(executor)
            raise
        except RuntimeError as e:  # shut down (the service stops): no new work
            raise BrokenProcessPool(f"the ingest's worker pool is shut down: {e}") from e
        submitted.add_done_callback(lambda f: self._check(executor, f))
        return submitted

    def _check(self, executor: ProcessPoolExecutor, future: Future[Prepared]) -> None:
        if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
            self._replace(executor)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is not broken or self._closed:
                return  # replaced already
            self._executor = self._start()
            self.restarts += 1
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Finish the requests in the workers, then stop them."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None

    def __enter__(self) -> IngestPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
