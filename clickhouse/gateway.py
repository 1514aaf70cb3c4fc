"""A ClickHouse HTTP interface over the embedded chDB that this process owns.

Only one process may open a chDB data directory. The sink opens it and serves this gateway, so
every other process can use a plain ``clickhouse_connect.get_client(host=..., port=...)`` on the
same data: queries with server-side (``{x:String}``) or client-side parameters, commands,
``insert`` / ``raw_insert`` in any input format, ``raw_query`` in any output format and per-query
settings, all as the ClickHouse HTTP protocol defines them (the ``query`` URL parameter and the
request body form the statement; for ``INSERT ... FORMAT`` the rest of the body is the data).

Differences from a ClickHouse server: there are no sessions (``session_id`` is ignored and ``SET``
/ ``USE`` statements are refused: pass settings and the database per request), no external data,
responses are buffered and sent uncompressed, and errors always use HTTP status 500 (401 for
authentication).
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import logging
import os
import queue
import re
import secrets
import tempfile
import threading
import time
import urllib.request
import uuid
from base64 import b64decode
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import chdb
import uvicorn
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agentstream.process.lifecycle import pid_alive
from agentstream.process.ports import listening_socket

logger = logging.getLogger(__name__)

STATE_SUFFIX = ".gateway.json"

# HTTP-interface parameters that are not engine settings; chDB would reject several of them.
_TRANSPORT_PARAMS = frozenset(
    {
        "query", "database", "default_format", "user", "password", "quota_key", "query_id",
        "session_id", "session_timeout", "session_check", "close_session", "compress", "decompress",
        "buffer_size", "wait_end_of_query", "client_protocol_version", "role", "stacktrace",
        "send_progress_in_http_headers", "http_headers_progress_interval_ms",
        "enable_http_compression", "http_zlib_compression_level",
        "cancel_http_readonly_queries_on_client_close", "http_response_buffer_size",
        "http_wait_end_of_query", "http_native_compression_disable_checksumming_on_decompress",
        "add_http_cors_header",
    }
)  # fmt: skip
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LEADING = r"(?:\s+|--[^\n]*\n|/\*.*?\*/)*"
# `INSERT INTO <target> [SETTINGS ...] FORMAT <fmt>`, then the data; ClickHouse starts the data
# after the first newline following the format name, or after the whitespace when there is none.
_INSERT_FORMAT = re.compile(
    _LEADING + r"INSERT\s+INTO\s+(?:TABLE\s+)?(?P<target>[^';]+?)"
    r"(?:\s+SETTINGS\s+(?P<settings>[^;]+?))?\s+FORMAT\s+(?P<format>\w+)[ \t\f\v]*(?:\r?\n)?",
    re.IGNORECASE | re.DOTALL,
)
_NOT_A_TARGET = re.compile(r"\b(?:SELECT|VALUES|WITH)\b", re.IGNORECASE)
_SESSION_STATEMENT = re.compile(_LEADING + r"(?:SET|USE)\b", re.IGNORECASE | re.DOTALL)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_ANY_FORMAT = re.compile(rb"\bFORMAT\b", re.IGNORECASE)
_ERROR_CODE = re.compile(r"Code: (\d+)\. ")
_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}

# ClickHouse error codes the gateway raises itself.
NOT_IMPLEMENTED = 48
CANNOT_DECOMPRESS = 271
AUTHENTICATION_FAILED = 516
STD_EXCEPTION = 1001


class GatewayError(Exception):
    """A ClickHouse exception: ``code`` plus a ``Code: N. DB::Exception: ...`` message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, code: int, text: str, name: str) -> GatewayError:
        return cls(code, f"Code: {code}. DB::Exception: {text}. ({name})")

    @classmethod
    def from_engine(cls, error: Exception) -> GatewayError:
        text = str(error)
        found = _ERROR_CODE.search(text)
        if found is None:
            return cls.of(STD_EXCEPTION, text or type(error).__name__, "STD_EXCEPTION")
        return cls(int(found.group(1)), text[found.start() :].strip())


class GatewayState(BaseModel):
    """The advertisement of a running gateway, stored next to the chDB directory it serves."""

    pid: int
    url: str
    chdb_path: str
    started_at: datetime

    @staticmethod
    def file_for(chdb_path: str | os.PathLike[str]) -> Path:
        """Where the advertisement of the gateway for ``chdb_path`` lives."""
        return Path(str(chdb_path) + STATE_SUFFIX)

    def save(self) -> Path:
        """Write the advertisement atomically; readers never see a partial file."""
        target = self.file_for(self.chdb_path)
        scratch = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        scratch.write_text(self.model_dump_json())
        os.replace(scratch, target)
        return target

    @classmethod
    def load(cls, chdb_path: str | os.PathLike[str]) -> GatewayState | None:
        """The live gateway for ``chdb_path``; None when none is advertised or its process died."""
        try:
            state = cls.model_validate_json(cls.file_for(chdb_path).read_bytes())
        except (OSError, ValueError):
            return None
        return state if state.pid > 0 and pid_alive(state.pid) else None

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The serving process's counters (``/agentstream/status``); None if it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/agentstream/status", timeout=timeout) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Handle:
    """One chDB connection and the session state the gateway has put on it."""

    __slots__ = ("conn", "database", "settings")

    def __init__(self, conn: Any):
        self.conn = conn
        self.database: str | None = None
        self.settings: dict[str, str] = {}


class _Engine:
    """A pool of chDB connections to the engine this process already hosts.

    The gateway owns its connections instead of borrowing the owner's client: per-request
    ``USE`` and settings must not leak into the owner's work, and separate connections let
    requests run in parallel. Settings are applied with ``SET`` only when they differ from what
    the connection already carries, so a client sending the same settings each time pays nothing.
    """

    def __init__(self, connection_string: str, default_database: str, size: int):
        self._connection_string = connection_string
        self._default_database = default_database
        self._size = size
        self._idle: queue.LifoQueue[_Handle] = queue.LifoQueue()
        self._created = 0
        self._lock = threading.Lock()
        self._closed = False

    def _acquire(self) -> _Handle:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._created < self._size:
                self._created += 1
                try:
                    return _Handle(chdb.connect(self._connection_string))
                except Exception:
                    self._created -= 1
                    raise
        return self._idle.get()

    def _release(self, handle: _Handle) -> None:
        if self._closed:
            handle.conn.close()
        else:
            self._idle.put(handle)

    def _prepare(self, handle: _Handle, database: str | None, settings: Mapping[str, str]) -> None:
        if "readonly" in handle.settings and handle.settings != settings:
            # A connection left readonly refuses every SET, even back to DEFAULT: replace it.
            fresh = chdb.connect(self._connection_string)
            handle.conn.close()
            handle.conn, handle.database, handle.settings = fresh, None, {}
        database = database or self._default_database
        if database != handle.database:
            handle.conn.query(f"USE {_quote_identifier(database)}", "TabSeparated")
            handle.database = database
        for name in [n for n in handle.settings if n not in settings]:
            handle.conn.query(f"SET {name} = DEFAULT", "TabSeparated")
            del handle.settings[name]
        for name in sorted(settings, key=lambda n: n == "readonly"):
            value = settings[name]
            if handle.settings.get(name) != value:
                handle.conn.query(f"SET {name} = {_quote_string(value)}", "TabSeparated")
                handle.settings[name] = value

    def execute(
        self,
        sql: str | bytes,
        fmt: str,
        *,
        database: str | None = None,
        settings: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Run one statement on a pooled connection; raises GatewayError on engine errors."""
        if self._closed:
            raise GatewayError.of(STD_EXCEPTION, "The gateway is shutting down", "ABORTED")
        handle = self._acquire()
        try:
            self._prepare(handle, database, dict(settings or {}))
            return handle.conn.query(sql, fmt, params=dict(params or {}))
        except Exception as error:
            raise GatewayError.from_engine(error) from error
        finally:
            self._release(handle)

    def close(self) -> None:
        """Close idle connections now and busy ones when their request finishes."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().conn.close()
            except queue.Empty:
                return


def _connection_string(client: Any) -> str:
    if isinstance(client, (str, os.PathLike)):
        return os.path.realpath(client)
    # The owner's exact engine string (path plus chDB options); a plain path would also do.
    backend_string = getattr(getattr(client, "_backend", None), "connection_string", None)
    return str(backend_string or os.path.realpath(client.path))


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not body or encoding in ("", "identity"):
        return body
    try:
        if encoding == "lz4":
            import lz4.frame

            # clickhouse-connect sends one LZ4 frame per block; lz4.frame.decompress reads only one.
            parts = []
            while body:
                decompressor = lz4.frame.LZ4FrameDecompressor()
                parts.append(decompressor.decompress(body))
                if not decompressor.eof:
                    raise ValueError("truncated LZ4 frame")
                body = decompressor.unused_data
            return b"".join(parts)
        from clickhouse_connect.driver._backend.httpcommon import decompress_response

        return decompress_response(body, encoding)
    except Exception as error:
        raise GatewayError.of(
            CANNOT_DECOMPRESS,
            f"Cannot decompress the {encoding!r} request body: {error}",
            "CANNOT_DECOMPRESS",
        ) from error


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Text fields of a multipart form (clickhouse-connect sends long parameters that way)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            raise GatewayError.of(
                NOT_IMPLEMENTED, "External data is not supported by chDB", "NOT_IMPLEMENTED"
            )
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode() if isinstance(payload, bytes) else ""
    return fields


class _Result:
    """A finished statement: body, output format (None when it produced no result set), stats."""

    def __init__(self, body: bytes, fmt: str | None, summary: dict[str, str]):
        self.body = body
        self.fmt = fmt
        self.summary = summary


def _summary(result: Any) -> dict[str, str]:
    try:
        read_rows, written_rows = result.rows_read(), result.rows_written()
        return {
            "read_rows": str(read_rows),
            "read_bytes": str(result.bytes_read()),
            "written_rows": str(written_rows),
            "written_bytes": str(result.bytes_written()),
            "total_rows_to_read": str(read_rows),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
    except (AttributeError, TypeError, ValueError):  # older chdb results lack some counters
        return {}


class _Executor:
    """Turns one HTTP request (parameters and the decompressed body) into a chDB call."""

    def __init__(self, engine: _Engine):
        self.engine = engine

    def run(self, params: Mapping[str, str], body: bytes) -> _Result:
        query = params.get("query", "").encode()
        statement = query + b"\n" + body if query and body else query or body
        if not statement.strip():
            raise GatewayError.of(62, "Empty query", "SYNTAX_ERROR")
        database = params.get("database") or None
        settings = {
            k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS and not k.startswith("param_")
        }
        for name in settings:
            if not _SETTING_NAME.fullmatch(name):
                raise GatewayError.of(115, f"Unknown setting '{name}'", "UNKNOWN_SETTING")
        bound = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}

        # The statement of an INSERT is short; its data can be large and binary. Latin-1 keeps
        # regex offsets equal to byte offsets.
        head = statement[: 1 << 16].decode("latin-1")
        insert = _INSERT_FORMAT.match(head)
        if insert and not _NOT_A_TARGET.search(insert.group("target")):
            return self._insert(insert, memoryview(statement)[insert.end() :], database, settings)
        if _SESSION_STATEMENT.match(head):
            raise GatewayError.of(
                NOT_IMPLEMENTED,
                "SET and USE need a session, which the chDB gateway does not keep: pass settings and "
                "the database with each query",
                "NOT_IMPLEMENTED",
            )
        return self._query(
            statement, params.get("default_format") or "TabSeparated", database, settings, bound
        )

    def _insert(
        self, match: re.Match[str], data: memoryview, database: str | None, settings: dict[str, str]
    ) -> _Result:
        # chDB takes no request body, so the data goes through a file; inline data in the
        # statement would be cut at the engine's max_query_size and at NUL bytes.
        target = match.group("target").encode("latin-1").decode()
        in_query = match.group("settings")
        in_query_clause = f" SETTINGS {in_query.encode('latin-1').decode()}" if in_query else ""
        with tempfile.NamedTemporaryFile(prefix="chdb-gateway-", suffix=".data", delete=False) as file:
            file.write(data)
        try:
            sql = (
                f"INSERT INTO {target} FROM INFILE {_quote_string(file.name)} COMPRESSION 'none'"
                f"{in_query_clause} FORMAT {match.group('format')}"
            )
            result = self.engine.execute(sql, "TabSeparated", database=database, settings=settings)
        finally:
            os.unlink(file.name)
        return _Result(b"", None, _summary(result))

    def _query(
        self,
        statement: bytes,
        default_format: str,
        database: str | None,
        settings: dict[str, str],
        bound: dict[str, str],
    ) -> _Result:
        try:
            sql: str | bytes = statement.decode()
        except UnicodeDecodeError:
            sql = statement
        text = sql if isinstance(sql, str) else statement.decode("latin-1")
        embedded = _TRAILING_FORMAT.search(text)
        if (
            embedded is None
            and default_format in ("TabSeparated", "TSV")
            and not _ANY_FORMAT.search(statement)
        ):
            # A result set always has a names line, a DDL statement prints nothing: that is how
            # the reply can tell clickhouse-connect's `command` whether there was a result set.
            result = self.engine.execute(
                sql, "TabSeparatedWithNames", database=database, settings=settings, params=bound
            )
            raw = result.bytes() or b""
            if not raw:
                return _Result(b"", None, _summary(result))
            newline = raw.find(b"\n")
            return _Result(raw[newline + 1 :] if newline >= 0 else b"", "TabSeparated", _summary(result))
        result = self.engine.execute(sql, default_format, database=database, settings=settings, params=bound)
        fmt = embedded.group(1) if embedded else default_format
        return _Result(result.bytes() or b"", fmt, _summary(result))


def _authorized(request: Request, token: str) -> bool:
    offered: list[str] = []
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        offered.append(credentials.strip())
    elif scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            offered.append(b64decode(credentials.strip()).decode().partition(":")[2])
    offered += [
        v for v in (request.headers.get("x-clickhouse-key"), request.query_params.get("password")) if v
    ]
    return any(secrets.compare_digest(candidate.encode(), token.encode()) for candidate in offered)


def _error_response(error: GatewayError, status_code: int = 500) -> Response:
    return PlainTextResponse(
        error.message + "\n",
        status_code=status_code,
        headers={"X-ClickHouse-Exception-Code": str(error.code)},
    )


def create_app(
    client: Any,
    *,
    status: Callable[[], dict[str, Any]] | None = None,
    token: str | None = None,
    pool_size: int = 4,
) -> Starlette:
    """The ASGI app of the gateway: the ClickHouse HTTP interface at ``/`` over chDB.

    Args:
        client: the owner's clickhouse-connect ``ChdbClient`` (or the chDB directory). The gateway
            opens its own connections to the same engine and never changes the client's state;
            requests without a ``database`` parameter use the client's database.
        status: called for ``GET /agentstream/status`` (404 when None).
        token: when set, requests other than ``/ping`` must present it as a bearer token,
            ``X-ClickHouse-Key``, the basic-auth or ``password`` parameter password.
        pool_size: chDB connections, i.e. statements that may run at the same time.

    Routes: ``GET|POST /`` (queries, commands and inserts), ``GET /ping`` (``Ok.``) and
    ``GET /agentstream/status``.
    """
    default_database = (
        getattr(client, "database", None) if not isinstance(client, (str, os.PathLike)) else None
    )
    engine = _Engine(_connection_string(client), default_database or "default", max(1, pool_size))
    executor = _Executor(engine)
    # `system` always exists; the owner's database may not have been created yet.
    timezone_name = (
        engine.execute("SELECT timezone()", "TabSeparated", database="system").bytes().decode().strip()
    )

    def denied(request: Request) -> Response | None:
        if token is None or _authorized(request, token):
            return None
        error = GatewayError.of(
            AUTHENTICATION_FAILED,
            "Authentication failed: wrong or missing gateway token",
            "AUTHENTICATION_FAILED",
        )
        return _error_response(error, 401)

    async def ping(request: Request) -> Response:
        return PlainTextResponse("Ok.\n")

    async def agentstream_status(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        if status is None:
            return JSONResponse({"error": "no status"}, status_code=404)
        # default=str: counters may carry datetimes or paths.
        body = json.dumps(await run_in_threadpool(status), default=str)
        return Response(body, media_type="application/json")

    async def handle(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        params = dict(request.query_params)
        body = await request.body()
        query_id = params.get("query_id") or str(uuid.uuid4())
        if request.method == "GET" and "query" not in params:
            return PlainTextResponse("Ok.\n")

        def execute() -> _Result:
            payload = _decompress(body, request.headers.get("content-encoding", ""))
            content_type = request.headers.get("content-type", "")
            if content_type.startswith("multipart/form-data"):
                params.update(_form_fields(content_type, payload))
                payload = b""
            return executor.run(params, payload)

        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": timezone_name}
        try:
            result = await run_in_threadpool(execute)
        except GatewayError as error:
            logger.debug("gateway query failed: %s", error.message)
            return _error_response(error)
        except Exception as error:
            logger.exception("gateway request failed")
            return _error_response(GatewayError.of(STD_EXCEPTION, str(error), "STD_EXCEPTION"))
        headers["X-ClickHouse-Summary"] = json.dumps(result.summary)
        media_type = "text/plain; charset=UTF-8"
        if result.fmt is not None:
            headers["X-ClickHouse-Format"] = result.fmt
            media_type = _CONTENT_TYPES.get(result.fmt, "application/octet-stream")
        return Response(result.body, headers=headers, media_type=media_type)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.close()

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
        chdb_path: str | os.PathLike[str] | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        token: str | None = None,
        pool_size: int = 4,
        advertise: bool = True,
    ):
        """
        Args:
            client: the owner's ``ChdbClient`` (see :func:`create_app`).
            host, port: where to listen; port 0 picks a free port.
            chdb_path: the chDB directory to advertise for; defaults to the client's path.
            status, token, pool_size: see :func:`create_app`.
            advertise: write the :class:`GatewayState` file while running.
        """
        self._client = client
        self._host = host
        self._requested_port = port
        path = chdb_path if chdb_path is not None else getattr(client, "path", client)
        self._chdb_path = None if str(path).startswith(":memory:") else Path(path)
        self._status = status
        self._token = token
        self._pool_size = pool_size
        self._advertise = advertise
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
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
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self._host, self._host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def state_file(self) -> Path | None:
        """Where the advertisement is written (None for an in-memory chDB)."""
        return GatewayState.file_for(self._chdb_path) if self._chdb_path is not None else None

    def start(self, timeout: float = 30.0) -> Self:
        """Start serving; returns once the gateway accepts connections and is advertised."""
        if self._thread is not None:
            raise RuntimeError("the gateway is already started")
        app = create_app(self._client, status=self._status, token=self._token, pool_size=self._pool_size)
        sock = listening_socket(self._host, self._requested_port)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="clickhouse-gateway", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError("the ClickHouse gateway failed to start")
            time.sleep(0.01)
        if self._advertise and self._chdb_path is not None:
            self._state = GatewayState(
                pid=os.getpid(),
                url=self.url,
                chdb_path=str(self._chdb_path),
                started_at=datetime.now(UTC),
            )
            self._state.save()
        logger.info("ClickHouse gateway on %s serves chDB %s", self.url, self._chdb_path)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Withdraw the advertisement, finish in-flight requests and stop serving."""
        if self._state is not None:
            # Only our own advertisement: a newer gateway may have replaced it.
            if GatewayState.load(self._state.chdb_path) == self._state:
                GatewayState.file_for(self._state.chdb_path).unlink(missing_ok=True)
            self._state = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
