"""Open ClickHouse the right way for each process.

With the embedded default (a ``chdb://`` DSN) only one process may open the data directory. The
sink owns it and serves a ClickHouse-compatible HTTP gateway; everyone else connects through that
gateway. When no sink runs (and no stack that will restart one), a reader opens the directory itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect

from agentstream.clickhouse.credentials import read_token
from agentstream.clickhouse.gateway import GatewayState
from agentstream.settings import Settings


def chdb_path_of(dsn: str) -> Path | None:
    """The data directory of a ``chdb://`` DSN, else None."""
    if not dsn.startswith("chdb://"):
        return None
    path = dsn[len("chdb://") :].split("?", 1)[0]
    if not path or path == "memory":
        return None
    return Path(path)


def open_owner(settings: Settings, **kwargs: Any) -> Any:
    """The client of the process that owns the ClickHouse data (the sink)."""
    dsn = settings.default_clickhouse_dsn
    path = chdb_path_of(dsn)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(dsn=dsn, **kwargs)


def connect(settings: Settings, *, write: bool = False, gateway_wait: float = 30.0, **kwargs: Any) -> Any:
    """A clickhouse-connect client for reading (or, with ``write``, changing data) from any process.

    With a chDB directory, a running sink's gateway (its query endpoint) is used, with the read
    credential, or the write credential when ``write`` is set; both are read from their files
    (:mod:`.credentials`). Through the read credential every statement is read-only. While an
    `agentstream up` of this data dir runs, its sink owns the directory even between restarts:
    this waits up to ``gateway_wait`` seconds for the gateway rather than open the directory and
    lock the sink out. With a ClickHouse server DSN, the DSN's own credentials are used.

    Raises:
        RuntimeError: the chDB directory is held by a process that serves no gateway, the
            running stack's gateway did not come up in time, or the credential cannot be read.
    """
    dsn = settings.default_clickhouse_dsn
    path = chdb_path_of(dsn)
    if path is None:
        return clickhouse_connect.get_client(dsn=dsn, **kwargs)
    state = GatewayState.load(path)
    deadline = time.monotonic() + gateway_wait
    while state is None and settings.running_stack() is not None:
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"the sink of the running `agentstream up` (data dir {settings.data_dir}) serves no "
                f"query gateway yet (waited {gateway_wait:.0f} s); it may be restarting: try again, "
                "or see its log"
            )
        time.sleep(0.2)
        state = GatewayState.load(path)
    if state is not None:
        url = urlparse(state.url)
        token = read_token(settings, write=write)
        # no server session: the gateway keeps none, and a session forbids concurrent queries
        return clickhouse_connect.get_client(
            host=url.hostname,
            port=url.port,
            username="default",
            password=token,
            autogenerate_session_id=False,
            **kwargs,
        )
    try:
        return clickhouse_connect.get_client(dsn=dsn, **kwargs)
    except Exception as e:
        raise RuntimeError(
            f"cannot open the chDB data directory {path}: {e}. Another process may own it; "
            "run `agentstream up` (its sink serves queries) or stop the other process."
        ) from e
