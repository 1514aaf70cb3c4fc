"""The web dashboard: rollouts, a failing rollout's span waterfall, resources and the live A/B view.

A Starlette app over :class:`~agentstream.analytics.queries.DashboardQueries`. Every HTML page has
a JSON twin under ``/api``. The dashboard only reads: with the embedded default it goes through the
sink's query gateway (the sink owns the chDB directory), and while the gateway is not up it answers
503 with the reason and tries again on the next request instead of failing.

    app = create_app(settings)                      # any ASGI server
    serve(settings)                                 # or: agentstream dashboard
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import os
import secrets
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
import orjson
import uvicorn
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from clickhouse_connect.driver.httpclient import HttpClient
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from agentstream.process.lifecycle import pid_alive
from agentstream.process.ports import listening_socket
from agentstream.settings import Settings

from .queries import FAILURE_CAUSES, DashboardQueries, NotFound, RolloutFilter, parse_time

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "agentstream_dashboard"
STATE_FILE = "dashboard.json"


class Unavailable(Exception):
    """ClickHouse cannot be reached (yet): the answer is 503, and the next request tries again."""


# ---- reaching ClickHouse -----------------------------------------------------------------------------
def open_client(settings: Settings) -> Any:
    """The dashboard's ClickHouse client.

    With a ``chdb://`` DSN the sink's gateway is used. While a stack runs for this data directory
    the dashboard never opens chDB itself (that would lock the sink out): until the gateway is up
    this raises :class:`Unavailable`. Without a running stack, ``connect`` opens the directory
    (:class:`ClickHouse` then closes it after every request).
    """
    from agentstream.clickhouse.connect import chdb_path_of, connect
    from agentstream.clickhouse.gateway import GatewayState

    path = chdb_path_of(settings.default_clickhouse_dsn)
    if path is not None and GatewayState.load(path) is None and settings.running_stack() is not None:
        raise Unavailable("the sink has not started its query gateway yet")
    try:
        return connect(settings)
    except (OperationalError, RuntimeError) as e:
        raise Unavailable(str(e)) from e


class ClickHouse:
    """How the dashboard reaches ClickHouse, request by request.

    A client over HTTP (the sink's gateway, a server) is opened on first use, shared by concurrent
    requests, and dropped after a connection failure (a restarted sink serves its gateway on a new
    port). A chDB directory opened in this process (no sink runs) is used by one request at a time
    and closed after each, so the dashboard never keeps a later sink from opening it.
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._client: Any = None
        self._opening = threading.Lock()

    def run(self, read: Callable[[DashboardQueries], Any]) -> Any:
        client = self._client
        if client is None:
            with self._opening:
                client = self._client
                if client is None:
                    client = self._connect()
                    if not isinstance(client, HttpClient):
                        try:
                            return read(DashboardQueries(client))
                        finally:
                            client.close()
                    self._client = client
        try:
            return read(DashboardQueries(client))
        except OperationalError as e:
            with self._opening:
                if self._client is client:
                    self._client = None
            raise Unavailable(str(e)) from e

    def _connect(self) -> Any:
        try:
            return self._factory()
        except OperationalError as e:
            raise Unavailable(str(e)) from e

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # already gone: nothing to release
                logger.debug("closing the ClickHouse client failed", exc_info=True)


# ---- responses ---------------------------------------------------------------------------------------
class JSONResponse(Response):
    """JSON via orjson: datetimes in ISO 8601 (UTC), NaN as null."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(
            content,
            default=_json_default,
            option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS,
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _cookie_value(token: str) -> str:
    """What the session cookie holds: a MAC of the token, so the cookie never carries the token itself."""
    return hmac.new(token.encode(), b"agentstream-dashboard-session", hashlib.sha256).hexdigest()


def _local_path(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/`` (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


# ---- template helpers --------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value >= 60_000:
        return f"{value / 60_000:.1f} min"
    if value >= 1_000:
        return f"{value / 1_000:.2f} s"
    return f"{value:.1f} ms"


def _pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 100:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _cost(value: float | None) -> str:
    if not value:
        return "0"
    return f"{value:.6f}".rstrip("0").rstrip(".") if value < 1 else f"{value:,.2f}"


def _when(value: datetime | None) -> str:
    if value is None:
        return "–"
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is escaped; nothing a rollout recorded can inject markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ms=_ms, pct=_pct, num=_num, cost=_cost, when=_when)
    env.globals.update(
        FAILURE_CAUSES=FAILURE_CAUSES,
        STATUSES=("succeeded", "failed", "running", "queuing", "requeuing", "cancelled"),
    )
    return Jinja2Templates(env=env)


# ---- the app -----------------------------------------------------------------------------------------
class Dashboard:
    """The routes; one instance per app, holding its ClickHouse client and templates."""

    def __init__(self, settings: Settings, clickhouse: ClickHouse) -> None:
        self.settings = settings
        self.clickhouse = clickhouse
        self.templates = _templates()

    def page(self, request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
        context = {
            "nav": name.removesuffix(".html"),
            "refresh_seconds": self.settings.dashboard.refresh_seconds,
            "auth": self.settings.dashboard.token is not None,
            **context,
        }
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def read(self, fn: Callable[[DashboardQueries], Any]) -> Any:
        return self.clickhouse.run(fn)

    # ---- rollouts
    def rollouts_page(self, request: Request) -> Response:
        where = _filter(request)
        page = self.read(lambda q: q.rollouts(where))
        if _wants_json(request):
            return JSONResponse(page)
        return self.page(
            request, "rollouts.html", {"page": page, "where": where, "params": request.query_params}
        )

    def rollout_page(self, request: Request) -> Response:
        rollout_id = request.path_params["rollout_id"]
        detail = self.read(lambda q: q.rollout(rollout_id))
        if _wants_json(request):
            return JSONResponse(detail)
        return self.page(request, "rollout.html", detail)

    # ---- resources
    def resources_page(self, request: Request) -> Response:
        resources = self.read(lambda q: q.resources())
        if _wants_json(request):
            return JSONResponse({"resources": resources})
        return self.page(request, "resources.html", {"resources": resources})

    def resource_page(self, request: Request) -> Response:
        name = request.path_params["name"]
        detail = self.read(lambda q: q.resource(name))
        if _wants_json(request):
            return JSONResponse(detail)
        a, b = _version_pair(request, detail["versions"])
        diff = self.read(lambda q: q.diff(name, a, b)) if a is not None and b is not None else None
        return self.page(request, "resource.html", {**detail, "diff": diff, "a": a, "b": b})

    def diff_api(self, request: Request) -> Response:
        name = request.path_params["name"]
        a, b = _int_param(request, "a"), _int_param(request, "b")
        if a is None or b is None:
            raise HTTPException(400, "give the two versions to compare: ?a=1&b=2")
        return JSONResponse(self.read(lambda q: q.diff(name, a, b)))

    # ---- A/B
    def ab_page(self, request: Request) -> Response:
        since = _time_param(request, "since")
        resources = self.read(lambda q: q.ab_resources())
        resource = request.query_params.get("resource") or (resources[0] if resources else "")
        ab = self.read(lambda q: q.ab(resource, since)) if resource else None
        if _wants_json(request):
            return JSONResponse({**(ab or {"resource": None, "versions": []}), "resources": resources})
        context = {
            "ab": ab,
            "resources": resources,
            "resource": resource,
            "since": request.query_params.get("since", ""),
        }
        return self.page(request, "ab.html", context)

    def ab_series(self, request: Request) -> Response:
        resource = request.query_params.get("resource", "")
        if not resource:
            raise HTTPException(400, "name the resource: ?resource=<name>")
        since = _time_param(request, "since")
        return JSONResponse(self.read(lambda q: q.ab_series(resource, since)))

    # ---- health and login
    def healthz(self, request: Request) -> Response:
        try:
            self.read(lambda q: q.client.query("SELECT 1"))
            clickhouse = "ok"
        except Unavailable as e:
            clickhouse = f"unavailable: {e}"
        return JSONResponse({"ok": True, "clickhouse": clickhouse})

    async def login(self, request: Request) -> Response:
        token = self.settings.dashboard.token
        target = _local_path(request.query_params.get("next"))
        if request.method == "POST":
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            target = _local_path((form.get("next") or [target])[0])
            given = (form.get("token") or [""])[0]
            if token is None or secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
                return _signed_in(target, token.get_secret_value() if token else None)
            return self.page(request, "login.html", {"next": target, "failed": True}, status_code=401)
        return self.page(request, "login.html", {"next": target, "failed": False})

    def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ---- errors
    def error(self, request: Request, status: int, title: str, message: str) -> Response:
        if _wants_json(request):
            headers = {"Retry-After": "2"} if status == 503 else None
            return JSONResponse({"error": title, "detail": message}, status_code=status, headers=headers)
        response = self.page(
            request, "error.html", {"status": status, "title": title, "message": message}, status
        )
        if status == 503:
            response.headers["Retry-After"] = "2"
        return response

    async def on_not_found(self, request: Request, exc: Exception) -> Response:
        return self.error(request, 404, "Not found", str(exc))

    async def on_invalid(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, ValidationError):
            message = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'filters'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
        else:
            message = str(exc)
        return self.error(request, 400, "Bad request", message)

    async def on_unavailable(self, request: Request, exc: Exception) -> Response:
        return self.error(
            request, 503, "ClickHouse is not reachable yet",
            f"{exc}. The dashboard tries again on every request; with the embedded stack, the sink serves "
            "the queries once it has started.",
        )  # fmt: skip

    async def on_query_error(self, request: Request, exc: Exception) -> Response:
        logger.warning("dashboard query failed: %s", exc)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return self.error(request, 500, "Query failed", first_line[:500])

    async def on_http(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 405: "Method not allowed"}
        return self.error(request, exc.status_code, titles.get(exc.status_code, "Error"), exc.detail)


def _signed_in(target: str, token: str | None) -> Response:
    response = RedirectResponse(target, status_code=303)
    if token is not None:
        response.set_cookie(COOKIE, _cookie_value(token), httponly=True, samesite="strict", path="/")
    return response


def _filter(request: Request) -> RolloutFilter:
    """The rollouts filter from the query string; empty form fields mean 'any'."""
    values = {k: v for k, v in request.query_params.items() if v.strip() != ""}
    return RolloutFilter.model_validate(values)


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw.removeprefix("v"))
    except ValueError:
        raise HTTPException(400, f"{name}: {raw!r} is not a version number") from None


def _time_param(request: Request, name: str) -> datetime | None:
    try:
        return parse_time(request.query_params.get(name))
    except ValueError as e:
        raise HTTPException(400, f"{name}: {e}") from None


def _version_pair(request: Request, versions: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    """The versions the resource page diffs: ``?a=&b=``, else the newest against its parent."""
    a, b = _int_param(request, "a"), _int_param(request, "b")
    if a is not None and b is not None:
        return a, b
    if not versions:
        return None, None
    newest = versions[0]
    parent = newest["parent_version"] or (versions[1]["version"] if len(versions) > 1 else None)
    return (parent, newest["version"]) if parent is not None else (None, None)


class TokenAuth:
    """Bearer-token auth for every route but /healthz, /login and the static files.

    ``Authorization: Bearer <token>`` or the session cookie passes; ``?token=<token>`` on any page
    sets the cookie and redirects to the same page without the token in its URL.
    """

    def __init__(self, app: ASGIApp, token: str, login_page: Callable[[Request], Response]) -> None:
        self.app = app
        self.token = token.encode()
        self.cookie = _cookie_value(token)
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in ("/healthz", "/login") or path.startswith("/static/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(credentials.strip().encode(), self.token):
            await self.app(scope, receive, send)
            return
        if secrets.compare_digest(request.cookies.get(COOKIE, "").encode(), self.cookie.encode()):
            await self.app(scope, receive, send)
            return
        given = request.query_params.get("token")
        if given is not None and secrets.compare_digest(given.encode(), self.token):
            url: URL = request.url.remove_query_params("token")
            response = _signed_in(url.path + (f"?{url.query}" if url.query else ""), self.token.decode())
        elif request.url.path.startswith("/api/"):
            response = JSONResponse(
                {"error": "Unauthorized", "detail": "send Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="agentstream"'},
            )
        else:
            response = self.login_page(request)
        await response(scope, receive, send)


class SecurityHeaders:
    """No framing, no foreign scripts: the pages load only their own CSS and JS."""

    HEADERS = [
        (b"content-security-policy",
         b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
         b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    ]  # fmt: skip

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *self.HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings, client_factory: Callable[[], Any] | None = None) -> Starlette:
    """The dashboard as an ASGI app.

    Args:
        settings: ``settings.dashboard`` (token, refresh) and where ClickHouse is.
        client_factory: returns a clickhouse-connect client; default :func:`open_client`. Called
            lazily, and again after a connection failure.
    """
    clickhouse = ClickHouse(client_factory or (lambda: open_client(settings)))
    dashboard = Dashboard(settings, clickhouse)
    routes = [
        Route("/", dashboard.rollouts_page),
        Route("/rollouts", dashboard.rollouts_page),
        Route("/rollouts/{rollout_id}", dashboard.rollout_page),
        Route("/resources", dashboard.resources_page),
        Route("/resources/{name}", dashboard.resource_page),
        Route("/ab", dashboard.ab_page),
        Route("/api/rollouts", dashboard.rollouts_page),
        Route("/api/rollouts/{rollout_id}", dashboard.rollout_page),
        Route("/api/resources", dashboard.resources_page),
        Route("/api/resources/{name}", dashboard.resource_page),
        Route("/api/resources/{name}/diff", dashboard.diff_api),
        Route("/api/ab", dashboard.ab_page),
        Route("/api/ab/series", dashboard.ab_series),
        Route("/healthz", dashboard.healthz),
        Route("/login", dashboard.login, methods=["GET", "POST"]),
        Route("/logout", dashboard.logout),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
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
    token = settings.dashboard.token
    if token is not None:

        def login_page(request: Request) -> Response:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return dashboard.page(request, "login.html", {"next": _local_path(target), "failed": False}, 401)

        app.add_middleware(TokenAuth, token=token.get_secret_value(), login_page=login_page)
    app.add_middleware(SecurityHeaders)
    app.state.dashboard = dashboard
    return app


# ---- serving -----------------------------------------------------------------------------------------
class DashboardState(BaseModel):
    """What a running dashboard advertises in ``<data_dir>/dashboard.json`` (``up`` shows the URL)."""

    pid: int
    url: str

    @classmethod
    def load(cls, data_dir: Path) -> DashboardState | None:
        try:
            state = cls.model_validate_json((data_dir / STATE_FILE).read_bytes())
        except (OSError, ValueError):
            return None
        return state if pid_alive(state.pid) else None

    def save(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        scratch = data_dir / f".{STATE_FILE}.{os.getpid()}"
        scratch.write_text(self.model_dump_json())
        scratch.replace(data_dir / STATE_FILE)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0 picks a free port)."""
    sock = listening_socket(host, port)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = {"0.0.0.0": "127.0.0.1", "::": "localhost"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def serve(settings: Settings, ready: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard on ``settings.dashboard.host:port`` until SIGINT/SIGTERM."""
    sock = bind(settings.dashboard.host, settings.dashboard.port)
    url = url_of(sock)
    state = DashboardState(pid=os.getpid(), url=url)
    state.save(settings.data_dir)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), log_level="warning", access_log=False, lifespan="on")
    )
    if ready is not None:
        ready(url)
    # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that was
    # there before it: this one makes that a normal return (state file removed, exit code 0).
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        current = DashboardState.load(settings.data_dir)
        if current is not None and current.pid == os.getpid():
            (settings.data_dir / STATE_FILE).unlink(missing_ok=True)
