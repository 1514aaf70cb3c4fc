"""A ClickHouse HTTP interface over the embedded chDB that this process owns.

Only one process may open a chDB data directory. The sink opens it and serves this gateway, so
every other process can use a plain ``clickhouse_connect.get_client(host=..., port=...)`` on the
same data: queries with server-side (``{x:String}``) or client-side parameters, commands,
``insert`` / ``raw_insert`` in any input format, ``raw_query`` in any output format and per-query
settings, all as the ClickHouse HTTP protocol defines them (the ``query`` URL parameter and the
request body form the statement; for ``INSERT ... FORMAT`` the rest of the body is the data).

Every request but ``/ping`` needs a credential (:mod:`.credentials`): the read credential runs
read-only queries, the write credential may also change data, and a GET request is read-only
whatever it carries. Statements are judged on the engine's parse of them (:mod:`.guard`): table
functions that reach files, the network or other servers, settings outside an allow-list and
several statements in one request are refused for everyone. Queries run on the gateway's own
threads and connections, never on the owner's, and stop after ``timeout`` seconds.

Differences from a ClickHouse server: there are no sessions (``session_id`` is ignored and ``SET``
/ ``USE`` statements are refused: pass settings and the database per request), no external data,
responses are buffered and sent uncompressed, and errors always use HTTP status 500 (401 for
authentication, 403 for what the credential may not do).

This module holds the Starlette app, the server object and its advertisement; the protocol is in
``protocol`` (a request becomes a statement), the connection pool in ``engine``, the exceptions in
``errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import urllib.request
import uuid
from base64 import b64decode
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agentstream.clickhouse.credentials import QueryCredentials, Role
from agentstream.clickhouse.engine import Engine, connection_string
from agentstream.clickhouse.errors import (
    ACCESS_DENIED,
    AUTHENTICATION_FAILED,
    READONLY,
    STD_EXCEPTION,
    GatewayError,
)
from agentstream.clickhouse.protocol import CONTENT_TYPES, Executor, Result, decompress, form_fields
from agentstream.process.http import BackgroundServer, http_url
from agentstream.process.ports import listening_socket
from agentstream.process.secrets import read_secret
from agentstream.process.status import PidStatus

logger = logging.getLogger(__name__)

STATE_SUFFIX = ".gateway.json"


class GatewayState(PidStatus):
    """The advertisement of a running gateway, stored next to the chDB directory it serves."""

    url: str
    chdb_path: str
    started_at: datetime
    token_file: str | None = None  # where a reader of the same user finds the read credential

    @staticmethod
    def file_for(chdb_path: str | os.PathLike[str]) -> Path:
        """Where the advertisement of the gateway for ``chdb_path`` lives."""
        return Path(str(chdb_path) + STATE_SUFFIX)

    def save(self) -> Path:
        """Write the advertisement atomically; readers never see a partial file."""
        return self.write_to(self.file_for(self.chdb_path))

    @classmethod
    def load(cls, chdb_path: str | os.PathLike[str]) -> GatewayState | None:
        """The live gateway for ``chdb_path``; None when none is advertised or its process died."""
        return cls.read_from(cls.file_for(chdb_path))

    def withdraw(self) -> None:
        """Remove the advertisement unless a newer gateway has replaced it."""
        self.withdraw_from(self.file_for(self.chdb_path))

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The serving process's counters (``/agentstream/status``, with the advertised read
        credential); None if it does not answer or the credential cannot be read."""
        try:
            token = read_secret(Path(self.token_file)) if self.token_file else ""
            request = urllib.request.Request(
                f"{self.url}/agentstream/status", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=timeout) as response:
                counters: dict[str, Any] = json.loads(response.read())
                return counters
        except (OSError, ValueError):
            return None


def _offered(request: Request) -> list[str]:
    # What ClickHouse HTTP clients send: basic auth (clickhouse-connect's username/password), a
    # bearer token (its access_token) or X-ClickHouse-Key. Never the URL: URLs end up in logs.
    offered: list[str] = []
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        offered.append(credentials.strip())
    elif scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            offered.append(b64decode(credentials.strip()).decode().partition(":")[2])
    key = request.headers.get("x-clickhouse-key")
    if key:
        offered.append(key)
    return [candidate for candidate in offered if candidate]


def _error_response(error: GatewayError, status_code: int = 500) -> Response:
    return PlainTextResponse(
        error.message + "\n",
        status_code=status_code,
        headers={"X-ClickHouse-Exception-Code": str(error.code)},
    )


def create_app(
    client: Any,
    *,
    credentials: QueryCredentials,
    status: Callable[[], dict[str, Any]] | None = None,
    pool_size: int = 4,
    timeout: float = 60.0,
) -> Starlette:
    """The ASGI app of the gateway: the ClickHouse HTTP interface at ``/`` over chDB.

    Args:
        client: the owner's clickhouse-connect ``ChdbClient`` (or the chDB directory). The gateway
            opens its own connections to the same engine and never changes the client's state;
            requests without a ``database`` parameter use the client's database.
        credentials: the tokens requests other than ``/ping`` must present (basic-auth password,
            bearer token or ``X-ClickHouse-Key``); which one decides the role.
        status: called for ``GET /agentstream/status`` (404 when None).
        pool_size: threads and chDB connections of the gateway, i.e. statements that may run at
            the same time; they are its own, so a long query never holds up the owner's inserts.
        timeout: seconds a statement may run (``max_execution_time``).

    Routes: ``GET|POST /`` (queries, commands and inserts), ``GET /ping`` (``Ok.``) and
    ``GET /agentstream/status``.
    """
    default_database = (
        getattr(client, "database", None) if not isinstance(client, (str, os.PathLike)) else None
    )
    size = max(1, pool_size)
    engine = Engine(connection_string(client), default_database or "default", size)
    executor = Executor(engine, timeout=timeout)
    threads = ThreadPoolExecutor(size, thread_name_prefix="agentstream-query")
    # `system` always exists; the owner's database may not have been created yet.
    timezone_name = (
        engine.execute("SELECT timezone()", "TabSeparated", database="system").bytes().decode().strip()
    )

    def unauthorized() -> Response:
        # No detail: the reply is the same whether nothing, a wrong or an old credential came.
        error = GatewayError.of(AUTHENTICATION_FAILED, "Authentication failed", "AUTHENTICATION_FAILED")
        return _error_response(error, 401)

    async def ping(request: Request) -> Response:
        return PlainTextResponse("Ok.\n")

    async def agentstream_status(request: Request) -> Response:
        if credentials.role_of(_offered(request)) is None:
            return unauthorized()
        if status is None:
            return JSONResponse({"error": "no status"}, status_code=404)
        # default=str: counters may carry datetimes or paths.
        body = json.dumps(await asyncio.get_running_loop().run_in_executor(threads, status), default=str)
        return Response(body, media_type="application/json")

    async def handle(request: Request) -> Response:
        role = credentials.role_of(_offered(request))
        if role is None:
            return unauthorized()
        if request.method == "GET":
            # A browser page can make GET requests to loopback: they never change anything.
            role = Role.READ
        params = dict(request.query_params)
        body = await request.body()
        query_id = params.get("query_id") or str(uuid.uuid4())
        if request.method == "GET" and "query" not in params:
            return PlainTextResponse("Ok.\n")

        def execute() -> Result:
            payload = decompress(body, request.headers.get("content-encoding", ""))
            content_type = request.headers.get("content-type", "")
            if content_type.startswith("multipart/form-data"):
                params.update(form_fields(content_type, payload))
                payload = b""
            return executor.run(params, payload, role)

        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": timezone_name}
        try:
            result = await asyncio.get_running_loop().run_in_executor(threads, execute)
        except GatewayError as error:
            logger.debug("gateway query failed: %s", error.message)
            return _error_response(error, 403 if error.code in (ACCESS_DENIED, READONLY) else 500)
        except Exception as error:
            logger.exception("gateway request failed")
            return _error_response(GatewayError.of(STD_EXCEPTION, str(error), "STD_EXCEPTION"))
        headers["X-ClickHouse-Summary"] = json.dumps(result.summary)
        media_type = "text/plain; charset=UTF-8"
        if result.fmt is not None:
            headers["X-ClickHouse-Format"] = result.fmt
            media_type = CONTENT_TYPES.get(result.fmt, "application/octet-stream")
        return Response(result.body, headers=headers, media_type=media_type)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.close()
            threads.shutdown(wait=False, cancel_futures=True)

    return Starlette(
        routes=[
            Route("/", handle, methods=["GET", "POST"]),
            Route("/ping", ping, methods=["GET", "HEAD"]),
            Route("/agentstream/status", agentstream_status, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


class ClickHouseGateway:
    """Serves :func:`create_app` with uvicorn on a background thread and advertises it.

    While running, ``<chdb_path>.gateway.json`` (a :class:`GatewayState`) tells other processes
    where to connect. Use as a context manager or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        client: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: QueryCredentials,
        chdb_path: str | os.PathLike[str] | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        pool_size: int = 4,
        timeout: float = 60.0,
        token_file: str | os.PathLike[str] | None = None,
        advertise: bool = True,
    ):
        """
        Args:
            client: the owner's ``ChdbClient`` (see :func:`create_app`).
            host, port: where to listen; port 0 picks a free port.
            chdb_path: the chDB directory to advertise for; defaults to the client's path.
            credentials, status, pool_size, timeout: see :func:`create_app`.
            token_file: the file holding the read credential, advertised so that processes of
                the same user can read the status counters.
            advertise: write the :class:`GatewayState` file while running.
        """
        self._client = client
        self._host = host
        self._requested_port = port
        path = chdb_path if chdb_path is not None else getattr(client, "path", client)
        self._chdb_path = None if str(path).startswith(":memory:") else Path(path)
        self._status = status
        self._credentials = credentials
        self._pool_size = pool_size
        self._timeout = timeout
        self._token_file = None if token_file is None else str(token_file)
        self._advertise = advertise
        self._port: int | None = None
        self._http: BackgroundServer | None = None
        self._state: GatewayState | None = None

    @property
    def port(self) -> int:
        """The port it listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("the gateway is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, with a loopback address when listening on all interfaces."""
        return http_url(self._host, self.port)

    @property
    def state_file(self) -> Path | None:
        """Where the advertisement is written (None for an in-memory chDB)."""
        return GatewayState.file_for(self._chdb_path) if self._chdb_path is not None else None

    def start(self, timeout: float = 30.0) -> Self:
        """Start serving; returns once the gateway accepts connections and is advertised."""
        if self._http is not None:
            raise RuntimeError("the gateway is already started")
        app = create_app(
            self._client,
            credentials=self._credentials,
            status=self._status,
            pool_size=self._pool_size,
            timeout=self._timeout,
        )
        http = BackgroundServer(
            app,
            listening_socket(self._host, self._requested_port),
            name="ClickHouse gateway",
            lifespan="on",
            timeout_keep_alive=30,
        )
        self._port = http.port
        self._http = http.start(timeout)
        if self._advertise and self._chdb_path is not None:
            self._state = GatewayState(
                pid=os.getpid(),
                url=self.url,
                chdb_path=str(self._chdb_path),
                started_at=datetime.now(UTC),
                token_file=self._token_file,
            )
            self._state.save()
        logger.info("ClickHouse gateway on %s serves chDB %s", self.url, self._chdb_path)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Withdraw the advertisement, finish in-flight requests and stop serving."""
        if self._state is not None:
            # Only our own advertisement: a newer gateway may have replaced it.
            self._state.withdraw()
            self._state = None
        if self._http is not None:
            self._http.stop(timeout)
            self._http = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
