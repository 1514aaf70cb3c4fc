"""The chDB gateway, for real: an ordinary clickhouse-connect HTTP client against the chDB of this
process, through ``ClickHouseGateway`` on a free port."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
import fastavro
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from agentstream.clickhouse.credentials import QueryCredentials
from agentstream.clickhouse.gateway import ClickHouseGateway, GatewayState

pytestmark = pytest.mark.integration

STATUS = {"batches": 3, "since": datetime(2024, 1, 2, tzinfo=UTC)}
READ, WRITE = "read-token-for-tests", "write-token-for-tests"
CREDENTIALS = QueryCredentials(READ, WRITE)


@pytest.fixture
def gateway(clickhouse: Any) -> Iterator[ClickHouseGateway]:
    with ClickHouseGateway(clickhouse, credentials=CREDENTIALS, port=0, status=lambda: STATUS) as running:
        yield running


@pytest.fixture
def remote(gateway: ClickHouseGateway, clickhouse: Any) -> Iterator[Any]:
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=gateway.port, database=clickhouse.database, password=WRITE
    )
    try:
        yield client
    finally:
        client.close()


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_is_an_http_client_on_this_chdb(remote: Any, clickhouse: Any) -> None:
    assert type(remote).__name__ == "HttpClient"
    assert remote.command("SELECT currentDatabase()") == clickhouse.database
    assert remote.server_version == clickhouse.server_version


def test_command_insert_and_parameters(remote: Any, clickhouse: Any) -> None:
    remote.command("CREATE TABLE events (id String, n UInt32, note String) ENGINE = MergeTree ORDER BY id")
    rows = [["a", 1, "plain"], ["b", 2, "tab\there, new\nline"], ["c", 3, "unicode ü ✓ 'quoted'"]]
    summary = remote.insert("events", rows, column_names=["id", "n", "note"])
    assert summary.written_rows == 3

    # The owner sees what went in through the gateway: it is the same chDB.
    assert clickhouse.query("SELECT id, n, note FROM events ORDER BY id").result_rows == [
        tuple(r) for r in rows
    ]

    server_side = remote.query(
        "SELECT id, note FROM events WHERE n > {min:UInt32} AND id IN {ids:Array(String)} ORDER BY id",
        parameters={"min": 1, "ids": ["b", "c", "zz"]},
    )
    assert server_side.column_names == ("id", "note")
    assert server_side.result_rows == [("b", rows[1][2]), ("c", rows[2][2])]
    assert remote.query(
        "SELECT n FROM events WHERE note = {s:String}", parameters={"s": rows[1][2]}
    ).result_rows == [(2,)]
    client_side = remote.query("SELECT n FROM events WHERE id = %(id)s", parameters={"id": "c"})
    assert client_side.result_rows == [(3,)]
    # Long parameters travel as a multipart form.
    many = [f"id-{i}" for i in range(3000)] + ["a"]
    assert remote.query(
        "SELECT count() FROM events WHERE id IN {ids:Array(String)}", parameters={"ids": many}
    ).result_rows == [(1,)]

    assert remote.command("SELECT count() FROM events") == 3
    assert remote.command("SHOW TABLES") == "events"
    assert remote.query("SELECT * FROM events LIMIT 0").column_names == ("id", "n", "note")
    assert remote.query("SELECT n FROM events WHERE id = 'nope'").result_rows == []
    assert remote.command("INSERT INTO events VALUES ('d', 4, 'inline')").written_rows == 1
    assert remote.command("SELECT count() FROM events") == 4

    frame = remote.query_df("SELECT id, n FROM events ORDER BY id")
    assert list(frame["id"]) == ["a", "b", "c", "d"]
    assert list(frame["n"]) == [1, 2, 3, 4]


def test_raw_insert_avro_and_raw_query_json(remote: Any) -> None:
    remote.command(
        "CREATE TABLE spans (span_id String, duration_ms Int64, ok Bool) ENGINE = MergeTree ORDER BY span_id"
    )
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "Span",
            "fields": [
                {"name": "span_id", "type": "string"},
                {"name": "duration_ms", "type": "long"},
                {"name": "ok", "type": "boolean"},
            ],
        }
    )
    records = [{"span_id": f"s{i}", "duration_ms": i * 10, "ok": i % 2 == 0} for i in range(5)]
    container = io.BytesIO()
    fastavro.writer(container, schema, records)
    summary = remote.raw_insert("spans", ["span_id", "duration_ms", "ok"], container.getvalue(), fmt="Avro")
    assert summary.written_rows == 5

    lines = (
        b'{"span_id": "j1", "duration_ms": 7, "ok": true}\n{"span_id": "j2", "duration_ms": 8, "ok": false}\n'
    )
    remote.raw_insert("spans", None, gzip.compress(lines), fmt="JSONEachRow", compression="gzip")

    document = json.loads(
        remote.raw_query("SELECT span_id, duration_ms, ok FROM spans ORDER BY span_id", fmt="JSON")
    )
    assert [c["name"] for c in document["meta"]] == ["span_id", "duration_ms", "ok"]
    assert document["rows"] == 7
    assert document["data"][0] == {"span_id": "j1", "duration_ms": 7, "ok": True}
    assert document["data"][2:] == records

    tsv = remote.raw_query(
        "SELECT span_id, duration_ms FROM spans WHERE duration_ms < {d:Int64} ORDER BY span_id",
        parameters={"d": 8},
        fmt="TabSeparated",
    )
    assert tsv == b"j1\t7\ns0\t0\n"
    assert remote.raw_query("SELECT 1 + 1") == b"2\n"


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", False])
def test_large_compressed_inserts(gateway: ClickHouseGateway, clickhouse: Any, compress: str | bool) -> None:
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=gateway.port, database=clickhouse.database, compress=compress, password=WRITE
    )
    client.command("CREATE TABLE numbers (id String, n UInt64) ENGINE = MergeTree ORDER BY n")
    count = 300_000  # several insert blocks, each its own compression frame
    columns = [[f"row-{i}" for i in range(count)], list(range(count))]
    summary = client.insert("numbers", columns, column_names=["id", "n"], column_oriented=True)
    assert summary.written_rows == count
    assert client.query("SELECT count(), sum(n), max(id) FROM numbers").result_rows == [
        (count, count * (count - 1) // 2, "row-99999")
    ]
    client.close()


def test_concurrent_clients(gateway: ClickHouseGateway, clickhouse: Any) -> None:
    setup = clickhouse_connect.get_client(
        host="127.0.0.1", port=gateway.port, database=clickhouse.database, password=WRITE
    )
    setup.command("CREATE TABLE hits (worker UInt8, i UInt32) ENGINE = MergeTree ORDER BY (worker, i)")

    def work(worker: int) -> int:
        client = clickhouse_connect.get_client(
            host="127.0.0.1", port=gateway.port, database=clickhouse.database, password=WRITE
        )
        for batch in range(5):
            client.insert(
                "hits", [[worker, batch * 100 + i] for i in range(100)], column_names=["worker", "i"]
            )
            client.query("SELECT count() FROM hits WHERE worker = {w:UInt8}", parameters={"w": worker})
        seen = client.command("SELECT count() FROM hits WHERE worker = {w:UInt8}", parameters={"w": worker})
        client.close()
        return int(seen)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(work, range(8))) == [500] * 8
    assert setup.command("SELECT count() FROM hits") == 4000
    setup.close()


def test_per_query_settings(remote: Any, clickhouse: Any) -> None:
    # Table settings in DDL are refused through the gateway (they could name a disk): the owner
    # creates the table.
    clickhouse.command(
        "CREATE TABLE dedup (id String) ENGINE = MergeTree ORDER BY id "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    rows = [["x"], ["y"], ["z"]]
    for _ in range(2):
        remote.insert("dedup", rows, column_names=["id"], settings={"insert_deduplication_token": "batch-1"})
    assert remote.command("SELECT count() FROM dedup") == 3
    remote.raw_insert(
        "dedup", ["id"], "x\ny\nz\n", fmt="TSV", settings={"insert_deduplication_token": "batch-1"}
    )
    assert remote.command("SELECT count() FROM dedup") == 3
    remote.insert("dedup", rows, column_names=["id"], settings={"insert_deduplication_token": "batch-2"})
    assert remote.command("SELECT count() FROM dedup") == 6
    # Settings inside the INSERT statement, with the data in the body.
    for _ in range(2):
        remote.command(
            "INSERT INTO dedup SETTINGS insert_deduplication_token = 'batch-3' FORMAT TSV", data="w\n"
        )
    assert remote.command("SELECT count() FROM dedup") == 7

    # Settings hold for their own query only.
    default = remote.command("SELECT getSetting('max_threads')")
    assert remote.command("SELECT getSetting('max_threads')", settings={"max_threads": 1}) == 1
    assert remote.command("SELECT getSetting('max_threads')") == default
    assert remote.command("SELECT getSetting('readonly')", settings={"readonly": 1}) == 1
    assert remote.command("SELECT getSetting('readonly')") == 0
    assert remote.command("SELECT getSetting('max_execution_time')") == 60
    remote.command("INSERT INTO dedup VALUES ('after-readonly')")


def test_errors_are_clickhouse_exceptions(remote: Any) -> None:
    with pytest.raises(DatabaseError, match="Unknown expression identifier `nope`") as caught:
        remote.query("SELECT nope FROM system.one")
    assert caught.value.code == 47
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE"):
        remote.command("SELECT * FROM no_such_table")
    with pytest.raises(DatabaseError, match="Syntax error"):
        remote.raw_query("SELEC 1")
    with pytest.raises(DatabaseError, match="the setting 'no_such_setting'"):
        remote.command("SELECT 1", settings={"no_such_setting": 1})
    with pytest.raises(DatabaseError, match="session"):
        remote.command("SET max_threads = 1")
    # The gateway keeps serving after errors.
    assert remote.command("SELECT 1") == 1


def test_ping_and_status(gateway: ClickHouseGateway, clickhouse: Any) -> None:
    assert http_get(f"{gateway.url}/ping") == (200, b"Ok.\n")
    assert http_get(f"{gateway.url}/agentstream/status")[0] == 401
    status, body = http_get(f"{gateway.url}/agentstream/status", {"Authorization": f"Bearer {READ}"})
    assert status == 200
    assert json.loads(body) == {"batches": 3, "since": str(STATUS["since"])}

    with ClickHouseGateway(clickhouse, credentials=CREDENTIALS, advertise=False) as silent:
        assert http_get(f"{silent.url}/agentstream/status", {"X-ClickHouse-Key": READ})[0] == 404


def test_token_is_required_when_set(clickhouse: Any) -> None:
    credentials = QueryCredentials("s3cret")
    with ClickHouseGateway(
        clickhouse, credentials=credentials, status=lambda: STATUS, advertise=False
    ) as guarded:
        assert http_get(f"{guarded.url}/ping") == (200, b"Ok.\n")
        assert http_get(f"{guarded.url}/agentstream/status")[0] in (401, 403)
        assert http_get(f"{guarded.url}/agentstream/status", {"Authorization": "Bearer wrong"})[0] in (
            401,
            403,
        )
        assert http_get(f"{guarded.url}/agentstream/status", {"Authorization": "Bearer s3cret"})[0] == 200
        status, body = http_get(f"{guarded.url}/?query=SELECT+1")
        assert status in (401, 403) and b"AUTHENTICATION_FAILED" in body

        with pytest.raises(DatabaseError, match="AUTHENTICATION_FAILED"):
            clickhouse_connect.get_client(host="127.0.0.1", port=guarded.port, password="wrong")
        for credentials in ({"access_token": "s3cret"}, {"password": "s3cret"}):
            client = clickhouse_connect.get_client(
                host="127.0.0.1", port=guarded.port, database=clickhouse.database, **credentials
            )
            assert client.command("SELECT 41 + 1") == 42
            client.close()


def test_advertisement_follows_the_gateway(clickhouse: Any, chdb_path: Path) -> None:
    advert = Path(str(chdb_path) + ".gateway.json")
    assert GatewayState.load(chdb_path) is None
    gateway = ClickHouseGateway(clickhouse, credentials=CREDENTIALS).start()
    try:
        assert advert.exists()
        state = GatewayState.load(chdb_path)
        assert state is not None
        assert state.url == gateway.url == f"http://127.0.0.1:{gateway.port}"
        assert Path(state.chdb_path) == chdb_path
        client = clickhouse_connect.get_client(host="127.0.0.1", port=gateway.port, password=READ)
        assert client.command("SELECT 1") == 1
        client.close()
    finally:
        gateway.stop()
    assert not advert.exists()
    assert GatewayState.load(chdb_path) is None


def test_state_of_a_dead_or_garbled_gateway_is_ignored(tmp_path: Path) -> None:
    chdb_dir = tmp_path / "clickhouse"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    GatewayState(
        pid=dead.pid, url="http://127.0.0.1:1", chdb_path=str(chdb_dir), started_at=datetime.now(UTC)
    ).save()
    assert GatewayState.load(chdb_dir) is None
    GatewayState.file_for(chdb_dir).write_text("{not json")
    assert GatewayState.load(chdb_dir) is None
