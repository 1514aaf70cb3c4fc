"""The operations endpoint of every long-running process: ``/metrics``, ``/healthz``, ``/readyz``.

* ``GET /metrics``: the process's Prometheus registry in the text format. It needs
  ``Authorization: Bearer <metrics token>`` (the token lives in a 0600 file, see
  :mod:`~agentstream.process.secrets`); anything else is answered 401.
* ``GET /healthz``: liveness, ``200 ok`` while the server answers at all.
* ``GET /readyz``: ``200 ready``, or ``503`` with a one-line reason from the component's readiness
  callable. Neither health route needs a credential, so they reveal nothing else.

Metrics are read on scrape: each component registers a collector (:class:`CallbackCollector`) that
turns its existing counters into metric families, so the hot paths never touch Prometheus. Each
process builds its own ``CollectorRegistry`` and passes it in; nothing here is global.

A running server advertises its URL in ``<data_dir>/ops/<component>-<pid>.json`` (:class:`OpsStatus`)
so that ``agentstream status`` finds every member's endpoint.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol, Self

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agentstream.process.http import BackgroundServer, http_url
from agentstream.process.ports import listening_socket
from agentstream.process.secrets import ensure_secret, secret_path
from agentstream.process.status import PidStatus

logger = logging.getLogger(__name__)

OPS_DIR = "ops"
METRICS_TOKEN = "metrics.token"

#: A component's readiness: ``None`` when ready, else the one-line reason it is not.
Readiness = Callable[[], str | None]


# ---- collectors: metric families built on scrape ----------------------------------------------------
def counter(name: str, documentation: str, value: float, **labels: str) -> CounterMetricFamily:
    """A counter family ``name`` (exposed as ``name_total``) with one sample."""
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def gauge(name: str, documentation: str, value: float, **labels: str) -> GaugeMetricFamily:
    """A gauge family ``name`` with one sample."""
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


class CallbackCollector(Collector):
    """A collector that calls ``collect`` on every scrape.

    A failing callback costs its own metrics only (logged once per distinct error): one broken
    source never empties the whole scrape.
    """

    def __init__(self, name: str, collect: Callable[[], Iterable[Metric]]) -> None:
        self.name = name
        self._collect = collect
        self._last_error = ""

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._collect())
        except Exception as e:  # a scrape must never fail because of one source
            error = f"{type(e).__name__}: {e}"
            if error != self._last_error:
                logger.warning("metrics: the %s collector failed: %s", self.name, error)
                self._last_error = error
            return iter(())
        return iter(families)


def process_collector(component: str, started: float) -> CallbackCollector:
    """``agentstream_process_start_time_seconds`` and ``..._up`` labelled with the component."""

    def collect() -> Iterable[Metric]:
        yield gauge(
            "agentstream_process_start_time_seconds",
            "When this agentstream process started (unix time).",
            started,
            component=component,
        )
        yield gauge("agentstream_process_up", "1 while the process serves.", 1, component=component)

    return CallbackCollector("process", collect)


# ---- the server ------------------------------------------------------------------------------------
def create_app(registry: CollectorRegistry, *, token: str, ready: Readiness | None = None) -> Starlette:
    """The operations app: ``/metrics`` (bearer ``token``), ``/healthz`` and ``/readyz``."""
    expected = f"Bearer {token}".encode()

    async def metrics(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        # constant time: the comparison does not tell how much of a guess was right
        if not hmac.compare_digest(given, expected):
            return PlainTextResponse(
                "unauthorized\n", status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if ready is None:
            return PlainTextResponse("ready\n")
        try:
            reason = await run_in_threadpool(ready)
        except Exception as e:  # a readiness check that fails means "not ready", never a 500
            reason = f"readiness check failed: {type(e).__name__}"
        if reason is None:
            return PlainTextResponse("ready\n")
        return PlainTextResponse(reason.splitlines()[0][:200] + "\n", status_code=503)

    return Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )


class OpsStatus(PidStatus):
    """What a process with an operations endpoint advertises in ``<data_dir>/ops/``."""

    component: str
    url: str
    started_at: float

    @staticmethod
    def file_for(data_dir: Path, component: str, pid: int) -> Path:
        """Where the process ``pid`` (a ``component``) advertises its endpoint."""
        return data_dir / OPS_DIR / f"{component}-{pid}.json"

    @classmethod
    def live(cls, data_dir: Path) -> list[OpsStatus]:
        """The endpoints of the live processes of ``data_dir``, by component then pid."""
        found = [cls.read_from(path) for path in sorted((data_dir / OPS_DIR).glob("*.json"))]
        return sorted((s for s in found if s is not None), key=lambda s: (s.component, s.pid))


class OpsServer:
    """Serves a process's operations endpoint on a background thread.

    Args:
        registry: the process's registry (components add their collectors to it).
        token: the bearer token of ``/metrics``.
        host, port: where to listen (port 0 picks a free one).
        component: what the process is ("sink", "worker", ...), for its status file.
        ready: the readiness callable of ``/readyz``; None means always ready.
        data_dir: where to advertise the URL (see :class:`OpsStatus`); None: nowhere.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        component: str,
        ready: Readiness | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.registry = registry
        self.component = component
        self._app = create_app(registry, token=token, ready=ready)
        self._host = host
        self._port = port
        self._data_dir = data_dir
        self._server: BackgroundServer | None = None
        self._status: OpsStatus | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the operations server is not started")
        return http_url(self._host, self._server.port)

    def start(self) -> Self:
        """Bind and serve; the URL is advertised once connections are accepted.

        Raises:
            OSError: the address cannot be bound (the message names it).
        """
        sock = listening_socket(self._host, self._port)
        self._server = BackgroundServer(self._app, sock, name="operations server").start()
        if self._data_dir is not None:
            pid = os.getpid()
            self._status = OpsStatus(pid=pid, component=self.component, url=self.url, started_at=time.time())
            self._status.write_to(OpsStatus.file_for(self._data_dir, self.component, pid))
        return self

    def stop(self) -> None:
        """Withdraw the advertisement and stop serving."""
        if self._status is not None and self._data_dir is not None:
            self._status.withdraw_from(OpsStatus.file_for(self._data_dir, self.component, self._status.pid))
            self._status = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Self:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class MetricsConfig(Protocol):
    """What :func:`start_ops_server` reads of ``Settings.metrics`` (process sits below settings)."""

    enabled: bool
    host: str
    port: int
    token_file: Path | None


def metrics_token_file(config: MetricsConfig, data_dir: Path) -> Path:
    """The file holding the ``/metrics`` bearer token."""
    return config.token_file or secret_path(data_dir, METRICS_TOKEN)


def start_ops_server(
    config: MetricsConfig,
    data_dir: Path,
    *,
    component: str,
    registry: CollectorRegistry,
    ready: Readiness | None = None,
) -> OpsServer | None:
    """Start ``component``'s operations server as ``config`` says; the token file is made if missing.

    Returns None when the endpoint is disabled or cannot start (logged): the component's own work
    matters more than its metrics, so it keeps running without them.
    """
    if not config.enabled:
        return None
    registry.register(process_collector(component, time.time()))
    try:
        token = ensure_secret(metrics_token_file(config, data_dir))
        server = OpsServer(
            registry,
            token=token,
            host=config.host,
            port=config.port,
            component=component,
            ready=ready,
            data_dir=data_dir,
        ).start()
    except (OSError, RuntimeError, ValueError) as e:
        logger.error("%s: no operations endpoint (/metrics, /healthz, /readyz): %s", component, e)
        return None
    logger.info("%s: operations endpoint on %s (/metrics, /healthz, /readyz)", component, server.url)
    return server


def scrape(url: str, token: str | None, timeout: float = 5.0) -> tuple[int, str]:
    """``GET url`` with the bearer ``token``: ``(status, body)``; status 0 when nothing answers."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ValueError):
        return 0, ""


__all__ = [
    "CallbackCollector",
    "MetricsConfig",
    "OpsServer",
    "OpsStatus",
    "Readiness",
    "counter",
    "create_app",
    "gauge",
    "metrics_token_file",
    "process_collector",
    "scrape",
    "start_ops_server",
]
