"""The sink as a service: own ClickHouse, serve queries (on chDB), consume until stopped."""

from __future__ import annotations

import logging
import threading

from agentstream.clickhouse.connect import chdb_path_of, open_owner
from agentstream.clickhouse.gateway import ClickHouseGateway
from agentstream.settings import Settings

from .clickhouse import ClickHouseSink

logger = logging.getLogger(__name__)


def run_sink(settings: Settings, stop: threading.Event) -> None:
    """Run the ClickHouse sink until ``stop`` is set.

    On an embedded chDB this process owns the data directory, so it also serves the
    ClickHouse-compatible query gateway that `agentstream sql`, reports and dashboards use.
    """
    client = open_owner(settings)
    sink = ClickHouseSink(settings, client, connect=lambda: open_owner(settings))
    sink.prepare()
    gateway = None
    chdb_path = chdb_path_of(settings.default_clickhouse_dsn)
    if chdb_path is not None:
        gateway = ClickHouseGateway(
            client,
            host=settings.sink.gateway_host,
            port=settings.sink.gateway_port,
            chdb_path=chdb_path,
            status=sink.stats.as_dict,
        ).start()
        logger.info("ClickHouse (chDB %s) serves queries on %s", chdb_path, gateway.url)
    try:
        sink.run(stop)
    finally:
        if gateway is not None:
            gateway.stop()
        client.close()
