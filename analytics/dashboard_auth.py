"""The dashboard's guards: the token, sign-in sessions, the sign-in rate limit, CSRF and security headers.

The dashboard always requires its token, on loopback too. Loopback is not private: every local
user (and every web page in a local browser, through DNS rebinding) can reach 127.0.0.1, and the
dashboard shows every prompt. So "no token configured" means "use the one in the token file",
generated (0600, in the 0700 secrets directory) on first use; the log names the file, never the
token. ``Authorization: Bearer <token>`` passes on every request; the login form (or ``?token=``
once) starts a *session*: the cookie holds a random id, the server keeps the session, which
expires when idle or old and which logout deletes, so a copied cookie stops working.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from agentstream.process.secrets import ensure_secret, private_dir, read_secret
from agentstream.settings import DashboardSettings, Settings

from .dashboard_render import JSONResponse

logger = logging.getLogger(__name__)

COOKIE = "agentstream_dashboard"
OPEN_PATHS = ("/healthz", "/readyz", "/login", "/logout")  # probes, and the way in and out
MAX_FORM_BYTES = 16_384

# (request, next path, failed?, status) -> the login page
LoginPage = Callable[[Request, str, bool, int], Response]


# ---- the token -------------------------------------------------------------------------------------
def dashboard_token(settings: Settings) -> str:
    """The token the dashboard requires: ``dashboard.token`` when set, else the token file's
    (``dashboard.token_path``), generated on first use."""
    if settings.dashboard.token is not None:
        return settings.dashboard.token.get_secret_value()
    path = settings.dashboard.token_path(settings.data_dir)
    if path.exists():  # read as is: a mounted secret (compose, Kubernetes) may be on a read-only volume
        return read_secret(path)
    return ensure_secret(path)


def token_file_env(settings: Settings) -> dict[str, str]:
    """How a stack tells its dashboard the token: the path of a 0600 file, never the token itself.

    A configured ``dashboard.token`` is written to the file first (children's environments are
    readable by every process of the user); otherwise the file is generated if missing.
    """
    path = settings.dashboard.token_path(settings.data_dir)
    if settings.dashboard.token is not None:
        write_secret(path, settings.dashboard.token.get_secret_value())
    else:
        ensure_secret(path)
    return {"AGENTSTREAM_DASHBOARD__TOKEN_FILE": str(path)}


def write_secret(path: Path, value: str) -> None:
    """Put ``value`` in ``path`` (0600, in a 0700 directory), replacing it atomically."""
    private_dir(path.parent)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as file:
            file.write(value + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def local_path(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/`` (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


# ---- sessions and the sign-in limit -----------------------------------------------------------------
@dataclass
class _Session:
    created: float
    seen: float


class Sessions:
    """Sign-in sessions kept server-side; the cookie holds only a random id.

    A session ends ``idle_seconds`` after its last use, ``max_seconds`` after sign-in, or at
    logout. Ids are stored hashed, so the store (a dump, a debugger) does not hold usable cookies.
    """

    MAX_SESSIONS = 10_000  # the oldest goes first: sign-ins cannot grow memory without bound

    def __init__(
        self, idle_seconds: float, max_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    def create(self) -> str:
        """A new session; returns its id (for the cookie)."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._purge(now)
            while len(self._sessions) >= self.MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[self._key(session_id)] = _Session(created=now, seen=now)
        return session_id

    def check(self, session_id: str | None) -> bool:
        """Whether ``session_id`` is a live session (and mark it used)."""
        if not session_id:
            return False
        key, now = self._key(session_id), self._clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return False
            if self._expired(session, now):
                del self._sessions[key]
                return False
            session.seen = now
            return True

    def revoke(self, session_id: str | None) -> None:
        """End the session: its cookie no longer signs anyone in."""
        if session_id:
            with self._lock:
                self._sessions.pop(self._key(session_id), None)

    def _expired(self, session: _Session, now: float) -> bool:
        return now - session.seen > self.idle_seconds or now - session.created > self.max_seconds

    def _purge(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]


class SignInLimit:
    """Wrong tokens allowed per client address, and from everyone together, per sliding window.

    Over either limit, credentials are not even compared (a locked-out guesser learns nothing)
    until the window has moved on; sessions already signed in are not affected.
    """

    MAX_CLIENTS = 10_000

    def __init__(
        self, per_client: int, total: int, window_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_client = per_client
        self.total = total
        self.window = window_seconds
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try a token again; 0 when it may now."""
        now = self._clock()
        with self._lock:
            self._prune(self._all, now)
            mine = self._failures.get(client)
            if mine is not None:
                self._prune(mine, now)
            waits = [0.0]
            if mine is not None and len(mine) >= self.per_client:
                waits.append(mine[-self.per_client] + self.window - now)
            if len(self._all) >= self.total:
                waits.append(self._all[-self.total] + self.window - now)
            return max(waits)

    def failed(self, client: str) -> None:
        """Count a wrong token from ``client``."""
        now = self._clock()
        with self._lock:
            if client not in self._failures and len(self._failures) >= self.MAX_CLIENTS:
                for name in [n for n, times in self._failures.items() if not self._prune(times, now)]:
                    del self._failures[name]
            self._failures.setdefault(client, deque()).append(now)
            self._all.append(now)

    def _prune(self, times: deque[float], now: float) -> int:
        while times and times[0] <= now - self.window:
            times.popleft()
        return len(times)


# ---- the guard ---------------------------------------------------------------------------------------
class Guard:
    """The dashboard's sign-in state: the token, the sessions and the sign-in limit, with the
    ``/login`` and ``/logout`` routes."""

    def __init__(self, token: str, settings: DashboardSettings, login_page: LoginPage) -> None:
        self.token = token.encode()
        self.sessions = Sessions(settings.session_idle_seconds, settings.session_max_seconds)
        self.limit = SignInLimit(
            settings.login_failures_per_client, settings.login_failures_total, settings.login_window_seconds
        )
        self.max_age = int(settings.session_max_seconds)
        self.login_page = login_page

    def matches(self, given: str) -> bool:
        """Constant-time comparison with the token."""
        return secrets.compare_digest(given.encode(), self.token)

    def sign_in(self, request: Request, target: str) -> Response:
        """A redirect to ``target`` that starts a session in the browser."""
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            self.sessions.create(),
            max_age=self.max_age,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def login(self, request: Request) -> Response:
        """``GET /login`` shows the form; ``POST /login`` checks the token and starts a session."""
        target = local_path(request.query_params.get("next"))
        if request.method != "POST":
            return self.login_page(request, target, False, 200)
        client = client_address(request)
        wait = self.limit.retry_after(client)
        if wait > 0:
            return too_many(request, wait)
        body = b""
        async for chunk in request.stream():  # bounded: a sign-in form is a few hundred bytes
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return PlainTextResponse("Request body too large", status_code=413)
        form = parse_qs(body.decode("utf-8", "replace"))
        target = local_path((form.get("next") or [target])[0])
        if self.matches((form.get("token") or [""])[0]):
            return self.sign_in(request, target)
        self.limit.failed(client)
        logger.warning("dashboard: wrong token from %s", client)
        return self.login_page(request, target, True, 401)

    async def logout(self, request: Request) -> Response:
        """End the session server-side (the old cookie stops working) and drop the cookie."""
        self.sessions.revoke(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response


def client_address(request: Request) -> str:
    """The peer's address (the unit of the per-client sign-in limit)."""
    return request.client.host if request.client is not None else "unknown"


def too_many(request: Request, wait: float) -> Response:
    """429 with ``Retry-After``: too many wrong tokens."""
    seconds = str(max(1, int(wait + 0.999)))
    detail = f"too many wrong tokens; try again in {seconds} s"
    if request.url.path.startswith("/api/"):
        return JSONResponse(
            {"error": "Too many requests", "detail": detail},
            status_code=429,
            headers={"Retry-After": seconds},
        )
    return PlainTextResponse(detail, status_code=429, headers={"Retry-After": seconds})


class TokenAuth:
    """Every route but the probes, ``/login``, ``/logout`` and the static files needs the token.

    A live session cookie or ``Authorization: Bearer <token>`` passes; ``?token=<token>`` on a page
    starts a session and redirects to the same page without the token in its URL. Wrong tokens
    count against the sign-in limit, however they are sent.
    """

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith("/static/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        guard = self.guard
        if guard.sessions.check(request.cookies.get(COOKIE)):
            await self.app(scope, receive, send)
            return
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        given = bearer.strip() if scheme.lower() == "bearer" else request.query_params.get("token")
        response: Response
        if given is not None:
            client = client_address(request)
            wait = guard.limit.retry_after(client)
            if wait > 0:
                response = too_many(request, wait)
            elif guard.matches(given):
                if scheme.lower() == "bearer":
                    await self.app(scope, receive, send)
                    return
                url: URL = request.url.remove_query_params("token")
                response = guard.sign_in(request, url.path + (f"?{url.query}" if url.query else ""))
            else:
                guard.limit.failed(client)
                logger.warning("dashboard: wrong token from %s", client)
                response = self.denied(request)
        else:
            response = self.denied(request)
        await response(scope, receive, send)

    def denied(self, request: Request) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"error": "Unauthorized", "detail": "send Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="agentstream"'},
            )
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self.guard.login_page(request, local_path(target), False, 401)


class SameOrigin:
    """CSRF guard: a request that changes state (anything but GET/HEAD/OPTIONS) from a browser must
    come from this site.

    Browsers send ``Origin`` (or at least ``Referer``) with every cross-site POST; one naming another
    host, or ``null``, is refused with 403. Requests with neither header come from non-browser
    clients (curl, scripts), which send the bearer token themselves. The session cookie is
    SameSite=Strict besides.
    """

    SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in self.SAFE:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        origin = request.headers.get("origin") or _origin_of(request.headers.get("referer"))
        # host[:port] only: behind a TLS-terminating proxy the browser says https, we see http
        if origin is not None and urlsplit(origin).netloc.lower() != request.url.netloc.lower():
            response: Response = PlainTextResponse("cross-site request refused", status_code=403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _origin_of(referer: str | None) -> str | None:
    if not referer:
        return None
    parts = urlsplit(referer)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "null"


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
