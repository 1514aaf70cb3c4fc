"""The dashboard's guards: token sign-in (bearer header or session cookie) and security headers."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .dashboard_render import JSONResponse

COOKIE = "agentstream_dashboard"


def cookie_value(token: str) -> str:
    """What the session cookie holds: a MAC of the token, so the cookie never carries the token itself."""
    return hmac.new(token.encode(), b"agentstream-dashboard-session", hashlib.sha256).hexdigest()


def local_path(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/`` (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def signed_in(target: str, token: str | None) -> Response:
    """A redirect to ``target`` that signs the browser in (the session cookie, when a token is set)."""
    response = RedirectResponse(target, status_code=303)
    if token is not None:
        response.set_cookie(COOKIE, cookie_value(token), httponly=True, samesite="strict", path="/")
    return response


class TokenAuth:
    """Bearer-token auth for every route but /healthz, /login and the static files.

    ``Authorization: Bearer <token>`` or the session cookie passes; ``?token=<token>`` on any page
    sets the cookie and redirects to the same page without the token in its URL.
    """

    def __init__(self, app: ASGIApp, token: str, login_page: Callable[[Request], Response]) -> None:
        self.app = app
        self.token = token.encode()
        self.cookie = cookie_value(token)
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
            response = signed_in(url.path + (f"?{url.query}" if url.query else ""), self.token.decode())
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
