"""Shared fixtures: one real broker per session, unique topics per test, and chDB.

``--broker=tansu`` (the default) runs the broker tests on the embedded Tansu broker,
``--broker=apache`` on Apache Kafka (KRaft, one combined node; jars from Maven Central, see
``agentstream.deploy.apache_kafka``). Tests marked ``apache_only`` (a 3-node cluster, SASL_SSL) run
only with ``--broker=apache``; tests marked ``tansu_only`` check a property of the embedded broker.

chDB allows one data directory per process, so in-process tests share one directory and get a
database each; tests that need their own sink process start one (see ``helpers.py``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import uuid
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import pytest

from agentstream.deploy.apache_kafka import KafkaCluster
from agentstream.deploy.broker import EmbeddedBroker
from agentstream.settings import Settings
from agentstream.topics.admin import ensure_topics


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=("tansu", "apache"),
        default="tansu",
        help="the Kafka broker of the integration tests: the embedded Tansu (default) or Apache Kafka (KRaft)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "apache_only: needs Apache Kafka (runs with --broker=apache)")
    config.addinivalue_line(
        "markers", "tansu_only: checks the embedded broker itself (runs with --broker=tansu)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.getoption("--broker")
    for item in items:
        if chosen != "apache" and item.get_closest_marker("apache_only"):
            item.add_marker(pytest.mark.skip(reason="needs Apache Kafka: run with --broker=apache"))
        if chosen != "tansu" and item.get_closest_marker("tansu_only"):
            item.add_marker(
                pytest.mark.skip(reason="checks the embedded Tansu broker: run with --broker=tansu")
            )


@pytest.fixture(scope="session")
def broker_kind(request: pytest.FixtureRequest) -> str:
    """``tansu`` or ``apache``: the broker this session's tests run on."""
    return str(request.config.getoption("--broker"))


@pytest.fixture(scope="session")
def broker(
    broker_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedBroker | KafkaCluster]:
    """The session's broker: ``bootstrap_servers`` is all a test needs of it."""
    if broker_kind == "apache":
        with KafkaCluster(brokers=1, data_dir=tmp_path_factory.mktemp("apache-kafka")) as cluster:
            yield cluster
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture
def settings(broker: EmbeddedBroker | KafkaCluster, tmp_path: Path) -> Settings:
    """Settings on the session broker with this test's own topics (created) and data dir."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    config = Settings(
        bootstrap_servers=broker.bootstrap_servers,
        data_dir=tmp_path / "data",
        topic_prefix=prefix,
        partitions=4,
        sink={"batch_max_seconds": 0.1, "retry_initial_seconds": 0.05, "retry_max_seconds": 0.5},
        sdk={"delivery_timeout_ms": 3000},
        dashboard={"port": 0},  # stacks of parallel tests must not fight over one port
        otlp={"http_port": 0, "grpc_port": 0},  # nor over the OTLP receiver's
    )
    ensure_topics(config)
    return config


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb") / "clickhouse"


@pytest.fixture
def clickhouse(chdb_path: Path) -> Iterator[object]:
    """A clickhouse-connect client on the session's chDB, in a database of its own."""
    admin = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")
    database = f"test_{uuid.uuid4().hex[:10]}"
    admin.command(f"CREATE DATABASE {database}")
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=database)
    try:
        yield client
    finally:
        client.close()
        admin.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        admin.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer causal LM with its own tokenizer (see ``tinymodel.py``), built once per session, offline."""
    from tests.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
