"""The gateway's pool of chDB connections to the engine its process already hosts."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Mapping
from typing import Any

import chdb

from agentstream.clickhouse.errors import STD_EXCEPTION, GatewayError


def quote_identifier(name: str) -> str:
    """``name`` as a backquoted ClickHouse identifier."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    """``value`` as a single-quoted ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def connection_string(client: Any) -> str:
    """The chDB engine string of the owner's client (or of a chDB directory path)."""
    if isinstance(client, (str, os.PathLike)):
        return os.path.realpath(client)
    # The owner's exact engine string (path plus chDB options); a plain path would also do.
    backend_string = getattr(getattr(client, "_backend", None), "connection_string", None)
    return str(backend_string or os.path.realpath(client.path))


class _Handle:
    """One chDB connection and the session state the gateway has put on it."""

    __slots__ = ("conn", "database", "settings")

    def __init__(self, conn: Any):
        self.conn = conn
        self.database: str | None = None
        self.settings: dict[str, str] = {}


class Engine:
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
            handle.conn.query(f"USE {quote_identifier(database)}", "TabSeparated")
            handle.database = database
        for name in [n for n in handle.settings if n not in settings]:
            handle.conn.query(f"SET {name} = DEFAULT", "TabSeparated")
            del handle.settings[name]
        for name in sorted(settings, key=lambda n: n == "readonly"):
            value = settings[name]
            if handle.settings.get(name) != value:
                handle.conn.query(f"SET {name} = {quote_string(value)}", "TabSeparated")
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
