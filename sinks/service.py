"""The sink as a service: own ClickHouse, serve queries (on chDB), consume until stopped."""

from __future__ import annotations

import logging
import os
import threading

from agentstream.clickhouse.connect import chdb_path_of, open_owner
from agentstream.clickhouse.credentials import ensure_credentials, token_file
from agentstream.clickhouse.gateway import ClickHouseGateway
from agentstream.process.secrets import private_dir
from agentstream.settings import Settings
from agentstream.topics.auth import check_credentials

from .clickhouse import ClickHouseSink
from .metrics import start_sink_ops
from .retention import apply_table_policies

logger = logging.getLogger(__name__)


def run_sink(settings: Settings, stop: threading.Event) -> None:
    """Run the ClickHouse sink until ``stop`` is set.

    On an embedded chDB this process owns the data directory, so it also serves the
    ClickHouse-compatible query gateway that `agentstream sql`, reports and dashboards use. The
    gateway always needs a credential: the files under ``<data_dir>/secrets/`` (created here when
    `agentstream up` has not already). The data directory and all it creates are private (0700/0600).
    """
    os.umask(0o077)  # chDB's files and whatever else this process creates: the owner's alone
    check_credentials(settings.admin_config())  # a wrong password: exit naming broker and principal
    private_dir(settings.data_dir)
    chdb_path = chdb_path_of(settings.default_clickhouse_dsn)
    if chdb_path is not None:
        private_dir(chdb_path)
    client = open_owner(settings)
    sink = ClickHouseSink(settings, client, connect=lambda: open_owner(settings))
    ops = start_sink_ops(settings, sink.stats)  # /metrics, /healthz, /readyz (503 until consuming)
    sink.prepare()
    apply_table_policies(client, settings.retention)
    gateway = None
    if chdb_path is not None:
        gateway = ClickHouseGateway(
            client,
            credentials=ensure_credentials(settings),
            host=settings.sink.gateway_host,
            port=settings.sink.gateway_port,
            chdb_path=chdb_path,
            status=sink.stats.as_dict,
            pool_size=settings.sink.query_threads,
            timeout=settings.sink.query_timeout_seconds,
            token_file=token_file(settings),
        ).start()
        logger.info("ClickHouse (chDB %s) serves queries on %s", chdb_path, gateway.url)
    try:
        sink.run(stop)
    finally:
        if ops is not None:
            ops.stop()
        if gateway is not None:
            gateway.stop()
        client.close()
