"""How the dashboard reaches ClickHouse: through the sink's gateway, or a chDB directory it opens
for one request at a time; ClickHouse out of reach answers 503 and is tried again on the next request."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError
from clickhouse_connect.driver.httpclient import HttpClient

from agentstream.settings import Settings

from .queries import DashboardQueries

logger = logging.getLogger(__name__)


class Unavailable(Exception):
    """ClickHouse cannot be reached (yet): the answer is 503, and the next request tries again."""


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
