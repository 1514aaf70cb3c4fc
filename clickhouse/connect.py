"""Open ClickHouse the right way for each process.

With the embedded default (a ``chdb://`` DSN) only one process may open the data directory. The
sink owns it and serves a ClickHouse-compatible HTTP gateway; everyone else connects through that
gateway. When no sink runs, a reader opens the directory itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect

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


def connect(settings: Settings, **kwargs: Any) -> Any:
    """A clickhouse-connect client for reading (or writing) from any process.

    Raises:
        RuntimeError: the chDB directory is held by a process that serves no gateway.
    """
    dsn = settings.default_clickhouse_dsn
    path = chdb_path_of(dsn)
    if path is None:
        return clickhouse_connect.get_client(dsn=dsn, **kwargs)
    state = GatewayState.load(path)
    if state is not None:
        url = urlparse(state.url)
        # no server session: the gateway keeps none, and a session forbids concurrent queries
        return clickhouse_connect.get_client(
            host=url.hostname, port=url.port, autogenerate_session_id=False, **kwargs
        )
    try:
        return clickhouse_connect.get_client(dsn=dsn, **kwargs)
    except Exception as e:
        raise RuntimeError(
            f"cannot open the chDB data directory {path}: {e}. Another process may own it; "
            "run `agentstream up` (its sink serves queries) or stop the other process."
        ) from e
