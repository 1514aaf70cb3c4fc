"""The sink against ClickHouse over HTTP (here: the gateway of a chDB owned by the test process),
the path a real ClickHouse server takes."""

from __future__ import annotations

import threading
import time

import clickhouse_connect
import pytest

from agentstream.clickhouse.credentials import QueryCredentials
from agentstream.clickhouse.gateway import ClickHouseGateway
from agentstream.producers.client import AgentStream
from agentstream.settings import Settings
from agentstream.sinks.clickhouse import ClickHouseSink
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def test_sink_inserts_over_http(settings: Settings, clickhouse: object) -> None:
    credentials = QueryCredentials("reader-token", "writer-token")
    with ClickHouseGateway(clickhouse, credentials=credentials, advertise=False) as gateway:
        authority = gateway.url.replace("http://", "http://default:writer-token@")
        http = settings.model_copy(
            update={
                "clickhouse_dsn": f"{authority}/{clickhouse.database}",  # type: ignore[attr-defined]
                "sink": settings.sink.model_copy(update={"session_timeout_ms": 2000}),
            }
        )

        def connect() -> object:
            return clickhouse_connect.get_client(dsn=http.clickhouse_dsn)

        sink = ClickHouseSink(http, connect(), connect=connect)
        client = connect()  # the test's own queries
        stop = threading.Event()
        runner = threading.Thread(target=sink.run, args=(stop,))
        runner.start()
        sdk = AgentStream(settings)
        try:
            for i in range(50):
                with sdk.rollout({"i": i}):
                    with sdk.span("step", kind="tool"):
                        pass
                    sdk.emit_reward(i / 50)
            assert sdk.flush(20)
            assert wait_for(lambda: int(client.command("SELECT count() FROM spans")) >= 100, timeout=30), (
                sink.stats
            )
            time.sleep(0.5)
            assert int(client.command("SELECT count() FROM spans")) == 100
            assert int(client.command("SELECT uniqExact(reward_id) FROM rewards")) == 50
        finally:
            sdk.close()
            stop.set()
            runner.join(30)
