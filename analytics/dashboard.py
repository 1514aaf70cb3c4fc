"""The web dashboard: rollouts, a failing rollout's span waterfall, resources and the live A/B view.

A Starlette app over :class:`~agentstream.analytics.queries.DashboardQueries`. Every HTML page has
a JSON twin under ``/api``. The dashboard only reads: with the embedded default it goes through the
sink's query gateway (the sink owns the chDB directory), and while the gateway is not up it answers
503 with the reason and tries again on the next request instead of failing.

    app = create_app(settings)                      # any ASGI server
    serve(settings)                                 # or: agentstream dashboard

This module assembles the app and serves it; the pages are in ``dashboard_views``, reaching
ClickHouse in ``dashboard_clickhouse``, sign-in and security headers in ``dashboard_auth``, JSON and
templates in ``dashboard_render``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.exceptions import DatabaseError
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agentstream.process.http import BackgroundServer, http_url
from agentstream.process.metrics import start_ops_server
from agentstream.process.ports import listening_socket
from agentstream.process.status import PidStatus
from agentstream.settings import Settings

from .dashboard_auth import COOKIE, Guard, SameOrigin, SecurityHeaders, TokenAuth, dashboard_token
from .dashboard_clickhouse import ClickHouse, Unavailable, open_client
from .dashboard_views import Dashboard
from .queries import NotFound

__all__ = ["COOKIE", "DashboardState", "bind", "create_app", "serve", "url_of"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
STATE_FILE = "dashboard.json"


def create_app(settings: Settings, client_factory: Callable[[], Any] | None = None) -> Starlette:
    """The dashboard as an ASGI app.

    Every route but /healthz, /readyz, /login, /logout and the static files needs the token (see
    :mod:`.dashboard_auth`: on loopback too): ``settings.dashboard.token``, else the token file's,
    generated on first use.

    Args:
        settings: ``settings.dashboard`` (token or token file, sessions, refresh) and where
            ClickHouse is.
        client_factory: returns a clickhouse-connect client; default :func:`open_client`. Called
            lazily, and again after a connection failure.
    """
    clickhouse = ClickHouse(client_factory or (lambda: open_client(settings)))
    dashboard = Dashboard(settings, clickhouse)

    def login_page(request: Request, target: str, failed: bool, status: int) -> Response:
        return dashboard.page(request, "login.html", {"next": target, "failed": failed}, status)

    guard = Guard(dashboard_token(settings), settings.dashboard, login_page)
    routes = [
        Route("/", dashboard.rollouts_page),
        Route("/rollouts", dashboard.rollouts_page),
        Route("/rollouts/{rollout_id}", dashboard.rollout_page),
        Route("/resources", dashboard.resources_page),
        Route("/resources/{name}", dashboard.resource_page),
        Route("/ab", dashboard.ab_page),
        Route("/dead-letters", dashboard.dead_letters_page),
        Route("/api/rollouts", dashboard.rollouts_page),
        Route("/api/rollouts/{rollout_id}", dashboard.rollout_page),
        Route("/api/resources", dashboard.resources_page),
        Route("/api/resources/{name}", dashboard.resource_page),
        Route("/api/resources/{name}/diff", dashboard.diff_api),
        Route("/api/ab", dashboard.ab_page),
        Route("/api/ab/series", dashboard.ab_series),
        Route("/api/dead-letters", dashboard.dead_letters_page),
        Route("/healthz", dashboard.healthz),
        Route("/login", guard.login, methods=["GET", "POST"]),
        Route("/logout", guard.logout, methods=["GET", "POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    handlers: dict[Any, Any] = {
        NotFound: dashboard.on_not_found,
        ValidationError: dashboard.on_invalid,
        Unavailable: dashboard.on_unavailable,
        DatabaseError: dashboard.on_query_error,
        HTTPException: dashboard.on_http,
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            clickhouse.close()

    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.add_middleware(TokenAuth, guard=guard)
    app.add_middleware(SameOrigin)  # outside the sign-in check: a cross-site POST /login is refused too
    app.add_middleware(SecurityHeaders)
    app.state.dashboard = dashboard
    return app


class DashboardState(PidStatus):
    """What a running dashboard advertises in ``<data_dir>/dashboard.json`` (``up`` shows the URL)."""

    url: str

    @classmethod
    def load(cls, data_dir: Path) -> DashboardState | None:
        """The live dashboard of ``data_dir``; None when none serves."""
        return cls.read_from(data_dir / STATE_FILE)

    def save(self, data_dir: Path) -> None:
        """Advertise this dashboard for ``data_dir``."""
        self.write_to(data_dir / STATE_FILE)

    def withdraw(self, data_dir: Path) -> None:
        """Remove the advertisement unless another dashboard has replaced it."""
        self.withdraw_from(data_dir / STATE_FILE)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0 picks a free port)."""
    sock = listening_socket(host, port)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """Where a dashboard listening on ``sock`` is reached."""
    host, port = sock.getsockname()[:2]
    return http_url(host, port)


def serve(settings: Settings, ready: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard on ``settings.dashboard.host:port`` until SIGINT/SIGTERM."""
    dashboard_token(settings)  # made now, so that the file exists when the URL is announced
    sock = bind(settings.dashboard.host, settings.dashboard.port)
    url = url_of(sock)
    if settings.dashboard.token is not None:
        logger.info("The dashboard requires the token set in dashboard.token")
    else:  # where the token is, never the token itself
        logger.info(
            "The dashboard requires the token in %s", settings.dashboard.token_path(settings.data_dir)
        )
    if not _loopback(settings.dashboard.host):
        logger.warning(
            "The dashboard listens on %s over plain HTTP: serve it behind TLS (a reverse proxy or Ingress) "
            "so that the token and session cookie do not cross the network in clear",
            settings.dashboard.host,
        )
    state = DashboardState(pid=os.getpid(), url=url)
    state.save(settings.data_dir)
    server = BackgroundServer(create_app(settings), sock, name="dashboard", lifespan="on")
    if ready is not None:
        ready(url)
    # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that was
    # there before it: this one makes that a normal return (state file removed, exit code 0).
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    ops = start_ops_server(
        settings.metrics, settings.data_dir, component="dashboard", registry=CollectorRegistry()
    )
    try:
        server.run()
    finally:
        if ops is not None:
            ops.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        state.withdraw(settings.data_dir)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
