"""agentstream on a SASL_SSL Apache Kafka: SCRAM-SHA-512 over TLS (a CA made here), ACLs enforced.

One 1-node cluster for the module (``--broker=apache``). The ``platform`` principal may do anything;
the ``sdk`` principal may only write (and describe) the topics the SDK produces. Every client gets
its credentials from one place, ``Settings(kafka=...)``: the SDK, the runner, the stream worker
(Faust/aiokafka) and the sink (child processes, given a password *file*), the resource store, the
promoter, a trainer's triplet stream and the OTLP ingest.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from agentstream.clickhouse.connect import connect
from agentstream.deploy.apache_kafka import KafkaCluster
from agentstream.deploy.apache_kafka.security import PRODUCE, SaslSslListener, add_scram_user, grant
from agentstream.producers.client import AgentStream
from agentstream.producers.runner import Runner
from agentstream.resources.store import ResourceStore
from agentstream.settings import Settings
from agentstream.streams.promotion import PromotionController
from agentstream.streams.promotion_policy import PromotionPolicy
from agentstream.topics.admin import ensure_topics
from agentstream.topics.auth import auth_problem
from agentstream.topics.catalogue import DEAD_LETTER, REWARDS, ROLLOUT_EVENTS, SCHEMAS, SPANS
from agentstream.trainers.stream import TripletStream
from tests.helpers import SinkProcess, WorkerProcess, llm_call, wait_for

pytestmark = pytest.mark.integration
apache_only = pytest.mark.apache_only  # the tests on the module's SASL_SSL cluster

#: what the SDK produces: the only topics its principal may touch
SDK_TOPICS = (SPANS, REWARDS, ROLLOUT_EVENTS, DEAD_LETTER, SCHEMAS)


@dataclass
class Secure:
    """The module's SASL_SSL cluster and its two principals."""

    cluster: KafkaCluster
    listener: SaslSslListener
    platform_password: str
    sdk_password: str

    def settings(
        self, data_dir: Path, prefix: str, principal: str = "platform", password: str | None = None
    ) -> Settings:
        """Fast settings on the secure cluster for ``principal`` (its password unless given)."""
        if password is None:
            password = self.platform_password if principal == "platform" else self.sdk_password
        return Settings(
            bootstrap_servers=self.cluster.bootstrap_servers,
            kafka=self.listener.client_settings(principal, password),
            data_dir=data_dir,
            topic_prefix=prefix,
            partitions=2,
            sink={"batch_max_seconds": 0.1, "retry_initial_seconds": 0.05, "session_timeout_ms": 2000},
            sdk={"delivery_timeout_ms": 5000},
            streams={
                "session_timeout_ms": 2_000,
                "heartbeat_interval_ms": 400,
                "timer_interval_seconds": 0.1,
                "metrics_flush_seconds": 0.5,
            },
            runner={
                "group_id": f"runners-{uuid.uuid4().hex[:8]}",
                "session_timeout_ms": 2_000,
                "lazy_start_seconds": 0.3,
                "heartbeat_seconds": 0.2,
                "shutdown_grace_seconds": 5.0,
            },
            trainer={"session_timeout_ms": 2_000},
            promotion={"hold_every_seconds": 0.1},
            dashboard={"port": 0},
            otlp={"http_port": 0, "grpc_port": 0},
        )

    def allow_sdk(self, settings: Settings) -> None:
        """The SDK principal's ACLs: write and describe its topics (of ``settings``' prefix), nothing else."""
        grant(
            self.cluster.admin_config(), "sdk", topics={settings.topic(t.name): PRODUCE for t in SDK_TOPICS}
        )


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("sasl")
    listener = SaslSslListener(root / "tls")
    with KafkaCluster(brokers=1, data_dir=root / "kafka", listener=listener) as cluster:
        admin = cluster.admin_config()
        platform = add_scram_user(admin, "platform")
        grant(admin, "platform", topics={"*": ("ALL",)}, groups={"*": ("ALL",)}, cluster=("ALL",))
        sdk = add_scram_user(admin, "sdk")
        yield Secure(cluster, listener, platform, sdk)


@pytest.fixture
def prefix() -> str:
    return f"s{uuid.uuid4().hex[:10]}."


def _process_secrets(pid: int) -> tuple[bytes, bytes]:
    """What others can see of a process: its environment and its argv."""
    return Path(f"/proc/{pid}/environ").read_bytes(), Path(f"/proc/{pid}/cmdline").read_bytes()


@apache_only
def test_every_client_runs_the_loop_over_sasl_ssl(secure: Secure, prefix: str, tmp_path: Path) -> None:
    settings = secure.settings(tmp_path / "data", prefix)
    sdk_settings = secure.settings(tmp_path / "data", prefix, principal="sdk")
    ensure_topics(settings)
    secure.allow_sdk(settings)

    # the sink and the worker are child processes: credentials from a 0600 file, never env or argv
    sink = SinkProcess(settings).start(timeout=120)
    worker = WorkerProcess(settings).start()
    client = AgentStream(sdk_settings)
    try:
        worker.wait_ready(timeout=120)
        for child in (sink.process, worker.process):
            environ, argv = _process_secrets(child.pid)
            assert secure.platform_password.encode() not in environ + argv
            assert b"AGENTSTREAM_KAFKA_PASSWORD_FILE=" in environ
        password_file = Path(settings.to_env()["AGENTSTREAM_KAFKA_PASSWORD_FILE"])
        assert password_file.stat().st_mode & 0o777 == 0o600

        with ResourceStore(settings, who="test") as store:
            store.publish("prompt", template="v1 {{ticket}}", labels=["production"])
            store.publish("prompt", template="v2 {{ticket}}", parent_version=1, labels=["candidate"])

            def agent(task: dict[str, Any], rollout: Any) -> float:
                prompt = rollout.resource("prompt").render(ticket=task["t"])
                llm_call(client, rollout, prompt, f"answer {task['t']}")
                return 1.0

            # runner: tasks and resources as the platform, its rollouts through the SDK principal
            ids = client.enqueue([{"t": f"q{i}"} for i in range(6)])
            runner = Runner(
                agent, settings, client=client, resources=store, traffic={"production": 0.5, "candidate": 0.5}
            )
            with runner:
                ch = connect(settings)
                ended = wait_for(
                    lambda: (
                        ch.query(
                            "SELECT count() FROM rollouts WHERE ended_at IS NOT NULL AND rollout_id IN {ids:Array(String)}",
                            parameters={"ids": ids},
                        ).result_rows[0][0]
                        == len(ids)
                    ),
                    timeout=120,
                    interval=0.5,
                )
                assert ended, f"{sink.log.read_text()[-3000:]}\n{worker.log.read_text()[-3000:]}"
                assert ch.query("SELECT count() FROM spans WHERE kind = 'llm'").result_rows[0][0] == len(ids)

            # a trainer reads the triplets the worker made
            with TripletStream(settings, f"t-{uuid.uuid4().hex[:6]}", window_count=len(ids)) as triplets:
                window = triplets.next_window(timeout=60)
            assert window is not None and {t.rollout_id for t in window.triplets} == set(ids)

            # the promoter reads the worker's per-version metrics and decides (too few samples: hold)
            controller = PromotionController(settings, PromotionPolicy(min_samples=1_000), store=store).open()
            try:

                def counted() -> Any:
                    controller.evaluate()
                    last = controller.decisions[-1] if controller.decisions else None
                    return (
                        last
                        if last is not None and last.candidate_n + last.production_n == len(ids)
                        else None
                    )

                decision = wait_for(counted, timeout=60, interval=0.3)
                assert decision is not None and decision.action == "hold", controller.decisions[-3:]
            finally:
                controller.close()

        # OTLP ingest publishes as the platform; the sink lands it
        from agentstream.producers.otlp.decode import spans_from_proto
        from agentstream.producers.otlp.ingest import OtlpIngest
        from tests.integration.test_otlp_receiver import llm_span, trace_request

        with OtlpIngest(settings) as ingest:
            result = ingest.publish_spans(spans_from_proto(trace_request(llm_span(0), llm_span(1)))).result(
                30
            )
        assert (result.accepted_spans, result.rejected) == (2, [])
        assert wait_for(
            lambda: ch.query("SELECT count() FROM spans WHERE rollout_id = 'ro-otlp'").result_rows[0][0] == 2,
            timeout=60,
        )
    finally:
        client.close()
        worker.stop()
        sink.stop()


@apache_only
def test_the_sdk_principal_may_only_write_its_topics(secure: Secure, prefix: str, tmp_path: Path) -> None:
    settings = secure.settings(tmp_path / "data", prefix)
    ensure_topics(settings)
    secure.allow_sdk(settings)
    sdk = secure.settings(tmp_path / "data", prefix, principal="sdk")

    with AgentStream(sdk) as client:
        with client.rollout({"q": 1}) as rollout:
            llm_call(client, rollout, "hello", "hi")
            rollout.emit_reward(1.0)
        assert client.flush(30), client.stats
    assert client.stats.delivered >= 4  # started, root span, chat span, reward, finished

    # writing a topic that is not the SDK's: refused, and the error names broker and principal
    outcomes: list[Any] = []
    producer = Producer({**sdk.producer_config(), "message.timeout.ms": 10_000})
    producer.produce(settings.topic("triplets"), b"x", on_delivery=lambda err, msg: outcomes.append(err))
    producer.flush(20)
    [error] = outcomes
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    problem = auth_problem(error, sdk.producer_config(), target=f"topic {settings.topic('triplets')}")
    assert problem is not None and not problem.authentication
    assert secure.cluster.bootstrap_servers in str(problem) and "User:sdk" in str(problem)

    # reading its own topic: refused too (no READ, no group)
    consumer = Consumer(sdk.consumer_config(f"g-{uuid.uuid4().hex[:6]}"))
    try:
        consumer.subscribe([settings.topic("spans")])
        refused = None
        deadline = time.monotonic() + 30
        while refused is None and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error():
                refused = auth_problem(message.error(), sdk.consumer_config("g"))
            assert message is None or message.error(), "the SDK principal read a record"
        assert refused is not None and "User:sdk" in str(refused)
    finally:
        consumer.close()


@apache_only
def test_a_wrong_password_is_one_clear_error_and_never_reaches_the_agent(
    secure: Secure, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = secure.settings(tmp_path / "data", prefix)
    ensure_topics(settings)
    secure.allow_sdk(settings)
    wrong = secure.settings(tmp_path / "data", prefix, principal="sdk", password="not-the-password")

    caplog.set_level(logging.ERROR, logger="agentstream")
    client = AgentStream(wrong)
    try:
        for i in range(3):  # the agent carries on: nothing raises, records go to the spool
            with client.rollout({"q": i}) as rollout:
                llm_call(client, rollout, "hello", "hi")
                rollout.emit_reward(1.0)

        def refused() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "rejected the credentials" in r.getMessage()]

        assert wait_for(refused, timeout=30)
        time.sleep(1.0)  # librdkafka keeps retrying: the error must still have been logged once
        [record] = refused()
        message = record.getMessage()
        assert secure.cluster.bootstrap_servers in message and "User:sdk" in message
        assert "not-the-password" not in caplog.text
        assert client.stats.delivered == 0
    finally:
        client.close(timeout=2)


@apache_only
@pytest.mark.parametrize("component", ["sink", "worker"])
def test_a_component_with_a_wrong_password_exits_naming_broker_and_principal(
    secure: Secure, prefix: str, tmp_path: Path, component: str
) -> None:
    settings = secure.settings(tmp_path / "data", prefix, password="not-the-password")
    process = SinkProcess(settings) if component == "sink" else WorkerProcess(settings)
    if component == "sink":
        with pytest.raises(RuntimeError, match="exited with 3"):
            process.start(timeout=90)  # type: ignore[call-arg]
        log = process.log.read_text()
    else:
        process.start()
        try:
            code = process.process.wait(timeout=90)
        finally:
            process.stop()
        assert code == 3
        log = process.log.read_text()
    # one line, naming the broker and the principal
    [line] = [line for line in log.splitlines() if "rejected the credentials" in line]
    assert line.startswith("error: Kafka at " + secure.cluster.bootstrap_servers), line
    assert "User:platform" in line
    assert "not-the-password" not in log


def test_child_processes_get_the_kafka_password_as_a_file(tmp_path: Path) -> None:
    settings = Settings(
        bootstrap_servers="127.0.0.1:9",
        data_dir=tmp_path / "data",
        kafka={"security.protocol": "SASL_SSL", "sasl.username": "u", "sasl.password": "s3cret"},
    )
    env = settings.to_env()
    assert "s3cret" not in json.dumps(env)
    path = Path(env["AGENTSTREAM_KAFKA_PASSWORD_FILE"])
    assert path.stat().st_mode & 0o777 == 0o600
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        rebuilt = Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert rebuilt.kafka["sasl.password"] == "s3cret"
    assert rebuilt.to_env()["AGENTSTREAM_KAFKA_PASSWORD_FILE"] == str(path)  # the same file, passed on


def test_auth_errors_name_broker_and_principal_and_nothing_else_is_one() -> None:
    kafka = {
        "bootstrap.servers": "kafka-1:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "sdk",
        "sasl.password": "p4ss",
    }
    login = auth_problem(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error"), kafka)
    assert login is not None and login.authentication
    assert "kafka-1:9093" in str(login) and "User:sdk (SCRAM-SHA-512 over SASL_SSL)" in str(login)
    denied = auth_problem(
        KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), kafka, target="topic t"
    )
    assert denied is not None and not denied.authentication and "on topic t" in str(denied)

    class GroupAuthorizationFailedError(Exception):  # aiokafka's, matched by name
        pass

    assert auth_problem(GroupAuthorizationFailedError("g"), kafka) is not None
    assert "p4ss" not in str(login) + str(denied)
    assert auth_problem(KafkaError(KafkaError._ALL_BROKERS_DOWN), kafka) is None
    assert auth_problem(ValueError("bad record"), kafka) is None
