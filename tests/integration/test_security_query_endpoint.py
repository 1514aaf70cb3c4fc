"""The sink's query endpoint lets nobody in who should not be: attacks from issue 13, for real.

A stack (`Stack`, sink member only, on the test broker) runs as `agentstream up` would; the tests
talk plain HTTP to its query endpoint, as a local attacker (or a web page) could.
"""

from __future__ import annotations

import base64
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentstream.clickhouse.connect import connect
from agentstream.clickhouse.credentials import read_token, token_file
from agentstream.clickhouse.gateway import GatewayState
from agentstream.deploy.stack import Stack
from agentstream.settings import Settings
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


class Endpoint:
    def __init__(self, url: str, read: str, write: str):
        self.url, self.read, self.write = url, read, write

    def request(
        self, sql: str, token: str | None, *, method: str = "POST", params: dict[str, str] | None = None
    ) -> tuple[int, str]:
        query = urllib.parse.urlencode({**(params or {}), **({"query": sql} if method == "GET" else {})})
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = sql.encode() if method == "POST" else None
        request = urllib.request.Request(f"{self.url}/?{query}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


@pytest.fixture(scope="module")
def stack(broker: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("secure") / "data"
    data_dir.mkdir(mode=0o755)  # as an older release left it: world-readable
    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers,  # type: ignore[attr-defined]
        data_dir=data_dir,
        topic_prefix=f"sec{time.time_ns()}.",
        partitions=1,
        sink={"query_timeout_seconds": 2, "batch_max_seconds": 0.1},
    )
    running = Stack(settings, workers=0, promoter=False, dashboard=False).start()
    try:
        running.wait_ready(120)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def endpoint(stack: Stack) -> Endpoint:
    state = GatewayState.load(stack.settings.chdb_path)
    assert state is not None
    settings = stack.settings
    return Endpoint(state.url, read_token(settings), read_token(settings, write=True))


def test_no_or_wrong_credential_is_refused(endpoint: Endpoint) -> None:
    for token in (None, "", "wrong", endpoint.read + "x", endpoint.read[:-1]):
        status, body = endpoint.request("SELECT 1", token)
        assert status == 401, (token, body)
        assert endpoint.read not in body and "token" not in body.lower()
    status, _ = endpoint.request("SELECT 1", None, method="GET")
    assert status == 401
    # The URL is no place for a credential (it ends up in logs and histories).
    assert endpoint.request("SELECT 1", None, params={"password": endpoint.read})[0] == 401
    basic = base64.b64encode(f"default:{endpoint.read}".encode()).decode()
    request = urllib.request.Request(
        f"{endpoint.url}/?query=SELECT%2042", headers={"Authorization": f"Basic {basic}"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.read() == b"42\n"


def test_read_role_reads_and_changes_nothing(endpoint: Endpoint) -> None:
    assert endpoint.request("SELECT count() FROM spans", endpoint.read) == (200, "0\n")
    for statement in (
        "INSERT INTO rewards (rollout_id) VALUES ('forged')",
        "INSERT INTO rewards SELECT * FROM rewards",
        "DROP TABLE spans",
        "ALTER TABLE spans DELETE WHERE 1 = 1",
        "TRUNCATE TABLE spans",
        "CREATE TABLE x (a String) ENGINE = Memory",
    ):
        status, body = endpoint.request(statement, endpoint.read)
        assert status == 403 and "READONLY" in body, (statement, body)
    assert endpoint.request("EXISTS TABLE spans", endpoint.read) == (200, "1\n")


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "SELECT file('/etc/passwd')",
        "select * from `FILE`('/etc/passwd', 'LineAsString')",
        "SELECT * FROM /* x */ File ( '/etc/passwd' , 'LineAsString' ) -- y",
        "SELECT * FROM \"file\"('/etc/passwd', 'LineAsString')",
        "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')",
        "SELECT * FROM remote('127.0.0.1', system.one)",
        "SELECT * FROM s3('http://127.0.0.1:1/x', 'CSV')",
        "SELECT * FROM numbers(1) WHERE 1 IN (SELECT 1 FROM url('http://127.0.0.1:1/', 'CSV'))",
        "SELECT * FROM view(SELECT * FROM file('/etc/passwd', 'LineAsString'))",
        "SELECT * FROM Python(token)",
        "SELECT * FROM executable('id', 'TSV', 'x String')",
        "SELECT 1 INTO OUTFILE '/tmp/agentstream-outfile'",
        "SELECT 1; DROP TABLE spans",
    ],
)
def test_table_functions_files_and_tricks_are_refused(endpoint: Endpoint, statement: str) -> None:
    for token in (endpoint.read, endpoint.write):
        status, body = endpoint.request(statement, token)
        assert status in (403, 500) and ("ACCESS_DENIED" in body or "SYNTAX_ERROR" in body), body
        assert "root:" not in body
    assert endpoint.request("SELECT count() FROM spans", endpoint.read)[0] == 200


def test_write_role_may_not_reach_files_either(endpoint: Endpoint) -> None:
    for statement in (
        "INSERT INTO FUNCTION file('/tmp/agentstream-written', 'TSV') SELECT 1",
        "CREATE TABLE leak (a String) ENGINE = File(LineAsString, '/etc/passwd')",
        "CREATE TABLE leak2 (a String) ENGINE = URL('http://127.0.0.1:1/', CSV)",
        "INSERT INTO spans FROM INFILE '/etc/passwd' FORMAT LineAsString",
        "CREATE TABLE d (a String) ENGINE = MergeTree ORDER BY a "
        "SETTINGS disk = disk(type = local, path = '/tmp/agentstream-disk/')",
        "SYSTEM SHUTDOWN",
        "BACKUP TABLE spans TO File('/tmp/agentstream-backup')",
    ):
        status, body = endpoint.request(statement, endpoint.write)
        assert status == 403 and "ACCESS_DENIED" in body, (statement, body)
    assert not Path("/tmp/agentstream-written").exists()


def test_settings_changes_are_refused(endpoint: Endpoint) -> None:
    for token in (endpoint.read, endpoint.write):
        assert endpoint.request("SET max_memory_usage = 1", token)[0] == 403
        assert endpoint.request("SELECT 1 SETTINGS readonly = 0", token)[0] in (403, 500)
        status, body = endpoint.request("SELECT 1", token, params={"readonly": "0"})
        assert status == 403, body
        status, body = endpoint.request("SELECT 1", token, params={"max_execution_time": "100000"})
        assert status == 403, body
        status, body = endpoint.request("SELECT 1", token, params={"allow_introspection_functions": "1"})
        assert status == 403, body
    # Output settings are fine.
    params = {"output_format_json_quote_64bit_integers": "0"}
    assert endpoint.request("SELECT 1", endpoint.read, params=params) == (200, "1\n")


def test_get_never_writes_and_post_with_write_role_does(endpoint: Endpoint) -> None:
    insert = "INSERT INTO model_prices (model, input_per_million, output_per_million) VALUES ('m', 1, 2)"
    status, body = endpoint.request(insert, endpoint.write, method="GET")
    assert status == 403 and "READONLY" in body
    assert endpoint.request("DROP TABLE model_prices", endpoint.write, method="GET")[0] == 403
    assert endpoint.request("SELECT count() FROM model_prices", endpoint.read) == (200, "0\n")
    assert endpoint.request(insert, endpoint.write) == (200, "")
    assert endpoint.request("SELECT count() FROM model_prices", endpoint.read) == (200, "1\n")


def test_system_tables_reveal_no_secret(endpoint: Endpoint) -> None:
    for table in ("settings", "server_settings", "processes", "build_options", "named_collections", "users"):
        status, body = endpoint.request(f"SELECT * FROM system.{table} FORMAT TSV", endpoint.read)
        assert endpoint.read not in body and endpoint.write not in body, table


def test_secrets_and_data_dir_are_private_and_never_in_env_or_logs(stack: Stack, endpoint: Endpoint) -> None:
    settings = stack.settings
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    for path in (token_file(settings), token_file(settings, write=True)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(settings.chdb_path.stat().st_mode) == 0o700
    created = [p for p in settings.chdb_path.rglob("*") if p.is_file()]
    assert created and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in created)
    sink = next(child for child in stack.children if child.name == "sink")
    environ = Path(f"/proc/{sink.status.pid}/environ").read_bytes()
    assert endpoint.read.encode() not in environ and endpoint.write.encode() not in environ
    assert endpoint.read.encode() not in Path(f"/proc/{sink.status.pid}/cmdline").read_bytes()
    for log in stack.logs.glob("*.log"):
        text = log.read_bytes()
        assert endpoint.read.encode() not in text and endpoint.write.encode() not in text, log


def test_slow_query_times_out_while_inserts_keep_landing(stack: Stack, endpoint: Endpoint) -> None:
    from agentstream.producers.client import AgentStream

    outcome: dict[str, tuple[int, str]] = {}
    slow = threading.Thread(
        target=lambda: outcome.update(
            slow=endpoint.request("SELECT count() FROM numbers(1e12)", endpoint.read)
        )
    )
    slow.start()
    sdk = AgentStream(stack.resolved_settings())
    try:
        for i in range(20):
            with sdk.rollout({"i": i}):
                with sdk.span("step", kind="tool"):
                    pass
        assert sdk.flush(20)
    finally:
        sdk.close()
    client = connect(stack.settings)
    assert wait_for(lambda: int(client.command("SELECT count() FROM spans")) >= 20, timeout=60)
    slow.join(60)
    status, body = outcome["slow"]
    assert status == 500 and "TIMEOUT_EXCEEDED" in body and "sink.query_timeout_seconds" in body, body
    assert int(client.command("SELECT count() FROM spans")) >= 20
