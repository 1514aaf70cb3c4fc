"""The OTLP receiver as a service: OTLP/HTTP, OTLP/gRPC and the Collector-topic consumer over one
:class:`~.ingest.OtlpIngest`, with the operations endpoint (``/metrics``, ``/healthz``, ``/readyz``).

``agentstream otlp`` runs it alone; ``agentstream up`` runs it as a member. While it serves, it
advertises its addresses in ``<data_dir>/otlp.json`` (:class:`OtlpState`) for the stack's status line.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

from agentstream.process.http import BackgroundServer, http_url
from agentstream.process.metrics import CallbackCollector, counter, gauge, start_ops_server
from agentstream.process.ports import listening_socket
from agentstream.process.status import PidStatus

from .collector_topics import CollectorTopicConsumer
from .grpc_server import OtlpGrpcServer
from .ingest import OtlpIngest
from .pool import IngestPool, default_workers
from .receiver import OtlpHttpApp, receiver_token, token_file

if TYPE_CHECKING:
    from agentstream.settings import Settings

logger = logging.getLogger(__name__)

STATE_FILE = "otlp.json"


class OtlpState(PidStatus):
    """What a running receiver advertises in ``<data_dir>/otlp.json``."""

    http_url: str
    grpc_address: str
    collector_topics: list[str]

    @classmethod
    def load(cls, data_dir: Path) -> OtlpState | None:
        """The live receiver of ``data_dir``; None when none serves."""
        return cls.read_from(data_dir / STATE_FILE)

    def save(self, data_dir: Path) -> None:
        self.write_to(data_dir / STATE_FILE)

    def withdraw(self, data_dir: Path) -> None:
        self.withdraw_from(data_dir / STATE_FILE)

    def summary(self) -> str:
        """One line for a status table."""
        topics = f", Kafka {'/'.join(self.collector_topics)}" if self.collector_topics else ""
        return f"HTTP {self.http_url}, gRPC {self.grpc_address}{topics}"


class OtlpService:
    """The receiver's parts, started together (:meth:`start`) and stopped in order (:meth:`stop`)."""

    def __init__(self, settings: Settings) -> None:
        config = settings.otlp
        self.settings = settings
        token = receiver_token(settings)
        self.ingest = OtlpIngest(settings, client_name="otlp-receiver")
        workers = default_workers() if config.workers is None else config.workers
        self.pool = IngestPool(settings, self.ingest.encoder, workers)
        ack_timeout = settings.sdk.delivery_timeout_ms / 1000 + 5
        self.http = OtlpHttpApp(
            self.ingest,
            token=token,
            max_body_bytes=config.max_body_bytes,
            ack_timeout=ack_timeout,
            pool=self.pool,
        )
        self.http_server = BackgroundServer(
            self.http.app, listening_socket(config.host, config.http_port), name="OTLP HTTP receiver"
        )
        self.grpc = OtlpGrpcServer(
            self.ingest,
            host=config.host,
            port=config.grpc_port,
            token=token,
            max_message_bytes=config.max_body_bytes,
            ack_timeout=ack_timeout,
            pool=self.pool,
        )
        self.collector = CollectorTopicConsumer(settings, self.ingest, self.pool)
        self._stop = threading.Event()
        self._consumer: threading.Thread | None = None
        self.state: OtlpState | None = None

    @property
    def http_url(self) -> str:
        return http_url(self.settings.otlp.host, self.http_server.port)

    @property
    def grpc_address(self) -> str:
        host = self.settings.otlp.host
        return f"[{host}]:{self.grpc.port}" if ":" in host else f"{host}:{self.grpc.port}"

    def start(self) -> OtlpService:
        try:
            self.pool.warm_up()  # the workers' imports happen before the receiver says it serves
        except BaseException:
            self.pool.close()
            raise
        self.http_server.start()
        self.grpc.start()
        if self.collector.topics:
            self._consumer = threading.Thread(
                target=self.collector.run, args=(self._stop,), name="otlp-collector-topics", daemon=True
            )
            self._consumer.start()
        self.state = OtlpState(
            pid=os.getpid(),
            http_url=self.http_url,
            grpc_address=self.grpc_address,
            collector_topics=self.collector.topics,
        )
        self.state.save(self.settings.data_dir)
        return self

    def stop(self) -> None:
        """Stop taking requests, finish the Collector batch, flush what waits for Kafka."""
        if self.state is not None:
            self.state.withdraw(self.settings.data_dir)
            self.state = None
        self.http_server.stop()
        self.grpc.stop()
        self._stop.set()
        if self._consumer is not None:
            self._consumer.join(timeout=30)
        self.pool.close()
        self.ingest.close()

    def __enter__(self) -> OtlpService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def metrics(self) -> Iterator[Metric]:
        """The receiver's counters, read on scrape."""
        ingest = self.ingest
        yield counter("agentstream_otlp_spans_acked", "Spans Kafka acknowledged.", ingest.acked_spans)
        yield counter("agentstream_otlp_rewards_acked", "Rewards Kafka acknowledged.", ingest.acked_rewards)
        yield counter("agentstream_otlp_rejected", "Items dead-lettered by the normaliser.", ingest.rejected)
        yield counter("agentstream_otlp_busy", "Batches refused as busy (429).", ingest.busy)
        yield counter("agentstream_otlp_failed", "Batches Kafka did not acknowledge.", ingest.failed)
        yield counter("agentstream_otlp_worker_restarts", "Worker pools replaced.", self.pool.restarts)
        yield gauge("agentstream_otlp_in_flight", "Records waiting for Kafka.", ingest.in_flight)
        requests = CounterMetricFamily(
            "agentstream_otlp_requests", "Requests per protocol and outcome.", labels=["protocol", "outcome"]
        )
        for protocol, outcomes in (("http", self.http.requests), ("grpc", self.grpc.requests)):
            for outcome, n in sorted(outcomes.items()):
                requests.add_metric([protocol, outcome], n)
        yield requests
        yield counter("agentstream_otlp_collector_records", "Collector records read.", self.collector.records)
        yield counter(
            "agentstream_otlp_collector_undecodable",
            "Collector records dead-lettered.",
            self.collector.undecodable,
        )

    def ready(self) -> str | None:
        if self.state is None:
            return "not serving"
        return None


def run_otlp(
    settings: Settings, stop: threading.Event, on_start: Callable[[OtlpService], None] | None = None
) -> None:
    """Run the OTLP receiver until ``stop`` is set; ``on_start`` is called once it serves.

    Raises:
        OSError: a port cannot be bound (the message names it).
    """
    service = OtlpService(settings).start()
    registry = CollectorRegistry()
    registry.register(CallbackCollector("otlp", service.metrics))
    ops = start_ops_server(
        settings.metrics, settings.data_dir, component="otlp", registry=registry, ready=service.ready
    )
    where = token_file(settings) if settings.otlp.require_token else "none required"
    logger.info(
        "OTLP receiver: HTTP %s, gRPC %s; bearer token: %s", service.http_url, service.grpc_address, where
    )
    try:
        if on_start is not None:
            on_start(service)
        stop.wait()
    finally:
        if ops is not None:
            ops.stop()
        service.stop()


__all__ = ["OtlpService", "OtlpState", "run_otlp"]
