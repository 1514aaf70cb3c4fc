"""Apache Kafka (KRaft) on loopback: one combined broker+controller, or a cluster of N of them.

Each node is a ``kafka.Kafka`` JVM on the jars :mod:`.classpath` resolved, with its own log
directory, a client listener and a controller listener on free loopback ports. All nodes are
controllers (a static quorum of N voters), so a 3-node cluster keeps a quorum with one node down:
what the fault tests need. Storage survives :meth:`KafkaCluster.kill_node` and
:meth:`KafkaCluster.start_node`, as on a real cluster; :meth:`KafkaCluster.stop` removes a data
directory the cluster made itself.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from agentstream.process.lifecycle import terminate
from agentstream.process.ports import free_port

from ..broker import _die_with_parent
from .classpath import KAFKA_VERSION, LOG4J_CONFIG, KafkaSetupError, java_binary, resolve_classpath

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


class ClientListener(Protocol):
    """How the client listener is secured (PLAINTEXT when the cluster has none).

    :mod:`.security` implements SASL_SSL with SCRAM; the cluster asks it for the broker properties
    of each node, the extra ``kafka-storage format`` arguments (SCRAM credentials must exist before
    the first start in KRaft) and the librdkafka properties of an admin client.
    """

    protocol: str

    def broker_properties(self, node_id: int) -> dict[str, str]: ...

    def format_arguments(self) -> list[str]: ...

    def admin_client_config(self) -> dict[str, str]: ...


@dataclass
class KafkaNode:
    """One broker+controller JVM."""

    node_id: int
    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class KafkaCluster:
    """Start, check, fault and stop Apache Kafka on 127.0.0.1.

    Args:
        brokers: nodes (1: one combined broker; 3: the fault tests' cluster).
        data_dir: where the nodes keep their logs; default a temporary directory removed by stop().
        listener: security of the client listener; default PLAINTEXT.
        properties: broker properties over the defaults below (every node).
        heap: the JVM heap of each node.
        port: the first node's client port (node i listens on ``port + i - 1``, its controller on
            ``port + 100 + i - 1``); 0 picks free ports.

    A ``data_dir`` that already holds formatted nodes is reused (same cluster id, same data), so
    ``agentstream kafka run --data-dir`` keeps its topics across restarts.

    >>> with KafkaCluster(brokers=3) as cluster:
    ...     print(cluster.bootstrap_servers)
    """

    brokers: int = 1
    data_dir: Path | None = None
    listener: ClientListener | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    heap: str = "384m"
    version: str = KAFKA_VERSION
    port: int = 0
    nodes: list[KafkaNode] = field(default_factory=list, init=False)
    cluster_id: str = field(default="", init=False)
    _owned_dir: Path | None = field(default=None, init=False)

    # ---- addresses ----------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.address for node in self.nodes)

    @property
    def protocol(self) -> str:
        return self.listener.protocol if self.listener is not None else "PLAINTEXT"

    def admin_config(self) -> dict[str, Any]:
        """librdkafka properties of an admin client (the listener's credentials included)."""
        base: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "socket.timeout.ms": 5000}
        if self.listener is not None:
            base.update(self.listener.admin_client_config())
        return base

    def node(self, node_id: int) -> KafkaNode:
        return next(node for node in self.nodes if node.node_id == node_id)

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> KafkaCluster:
        """Resolve the jars (first use), format every node's storage, start them, wait until every
        broker is registered and answers metadata.

        Raises:
            KafkaSetupError: Java/Maven missing, formatting failed, or not ready within ``timeout``
                (the message carries the tail of the failing node's log).
        """
        libs = resolve_classpath(self.version)
        if self.data_dir is None:
            self._owned_dir = Path(tempfile.mkdtemp(prefix="agentstream-kafka-"))
            root = self._owned_dir
        else:
            root = self.data_dir
        root.mkdir(parents=True, exist_ok=True)
        self.cluster_id = _existing_cluster_id(root) or _cluster_id()
        self.nodes = [
            KafkaNode(
                i,
                self.port + i - 1 if self.port else free_port(HOST),
                self.port + 100 + i - 1 if self.port else free_port(HOST),
                root / f"node-{i}",
            )
            for i in range(1, self.brokers + 1)
        ]
        self._classpath = f"{libs}/*"
        for node in self.nodes:
            self._write_config(node)
            if not (node.directory / "data" / "meta.properties").exists():
                self._format(node)
        for node in self.nodes:
            self._spawn(node)
        try:
            self.wait_ready(timeout)
        except KafkaSetupError:
            self.stop()
            raise
        logger.info("Apache Kafka %s (%d node(s)) on %s", self.version, self.brokers, self.bootstrap_servers)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every node at once (a controlled shutdown), SIGKILL what is left after ``timeout``."""
        for node in self.nodes:
            if node.is_running() and node.process is not None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.process is not None:
                terminate(node.process, max(0.1, deadline - time.monotonic()))
                node.process = None
            if node.log_file is not None:
                node.log_file.close()
                node.log_file = None
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node (its storage stays, as after a machine crash)."""
        node = self.node(node_id)
        if node.process is not None:
            node.process.kill()
            node.process.wait()
            node.process = None

    def stop_node(self, node_id: int, timeout: float = 60.0) -> None:
        """A controlled shutdown of one node (SIGTERM: leadership moves away first)."""
        node = self.node(node_id)
        if node.process is not None:
            terminate(node.process, timeout)
            node.process = None

    def start_node(self, node_id: int, timeout: float = 90.0) -> None:
        """Start a stopped or killed node again on its ports and storage; waits until it is registered."""
        node = self.node(node_id)
        if not node.is_running():
            self._spawn(node)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Until every running node is registered with the cluster and answers metadata itself."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        last: str = ""
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise KafkaSetupError(
                        f"Kafka node {node.node_id} exited with code {node.process.returncode}:\n{_tail(node.log_path)}"
                    )
            running = [node for node in self.nodes if node.is_running()]
            try:
                for node in running:
                    with socket.create_connection((HOST, node.port), timeout=0.5):
                        pass
                    admin = AdminClient({**self.admin_config(), "bootstrap.servers": node.address})
                    registered = admin.list_topics(timeout=3.0).brokers
                    if {n.node_id for n in running} - set(registered):
                        raise KafkaSetupError(f"node {node.node_id} sees brokers {sorted(registered)}")
                return
            except Exception as e:  # noqa: BLE001 - any failure here means "not ready yet"
                last = str(e)
                time.sleep(0.25)
        logs = "\n".join(f"--- node {n.node_id}\n{_tail(n.log_path)}" for n in self.nodes)
        raise KafkaSetupError(f"Apache Kafka not ready after {timeout:.0f}s ({last}):\n{logs}")

    def leader_of(self, topic: str, partition: int = 0, timeout: float = 10.0) -> int:
        """The node id leading ``topic[partition]`` now (from a metadata request)."""
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient(self.admin_config()).list_topics(topic, timeout=timeout)
        return int(metadata.topics[topic].partitions[partition].leader)

    def in_sync_replicas(self, topic: str, partition: int = 0, timeout: float = 10.0) -> list[int]:
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient(self.admin_config()).list_topics(topic, timeout=timeout)
        return list(metadata.topics[topic].partitions[partition].isrs)

    # ---- node setup ---------------------------------------------------------------------------
    def _broker_properties(self, node: KafkaNode) -> dict[str, str]:
        n = self.brokers
        voters = ",".join(f"{other.node_id}@{HOST}:{other.controller_port}" for other in self.nodes)
        client = self.protocol
        listener_name = "CLIENT"
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"{listener_name}://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
            "advertised.listeners": f"{listener_name}://{HOST}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": listener_name,
            "listener.security.protocol.map": f"{listener_name}:{client},CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.directory / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(min(3, n)),
            "min.insync.replicas": str(min(2, n)),
            "offsets.topic.replication.factor": str(min(3, n)),
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": str(min(3, n)),
            "transaction.state.log.min.isr": str(min(2, n)),
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": str(min(3, n)),
            "share.coordinator.state.topic.min.isr": str(min(2, n)),
            "group.initial.rebalance.delay.ms": "0",
            # the tests run consumer groups with 2 s sessions (a failover in seconds); 6 s is the floor
            # a broker allows by default
            "group.min.session.timeout.ms": "1000",
            "unclean.leader.election.enable": "false",
            "auto.create.topics.enable": "true",
            # small segments keep the disk use of long test sessions down
            "log.segment.bytes": str(64 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
            "controlled.shutdown.enable": "true",
        }
        if self.listener is not None:
            properties.update(self.listener.broker_properties(node.node_id))
        properties.update(self.properties)
        return properties

    def _write_config(self, node: KafkaNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self._broker_properties(node).items()]
        config = node.directory / "server.properties"
        config.write_text("\n".join(lines) + "\n")
        config.chmod(0o600)  # it may hold the listener's key password

    def _java(self, main: str, arguments: Sequence[str]) -> list[str]:
        return [
            java_binary(),
            f"-Xmx{self.heap}",
            f"-Xms{min(int(self.heap.rstrip('m')), 256)}m" if self.heap.endswith("m") else "-Xms256m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            self._classpath,
            main,
            *arguments,
        ]

    def _format(self, node: KafkaNode) -> None:
        arguments = ["format", "-t", self.cluster_id, "-c", str(node.directory / "server.properties")]
        if self.listener is not None:
            arguments += self.listener.format_arguments()
        done = subprocess.run(
            self._java("kafka.tools.StorageTool", arguments), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise KafkaSetupError(
                f"kafka-storage format failed on node {node.node_id}:\n{done.stdout}{done.stderr}"
            )

    def _spawn(self, node: KafkaNode) -> None:
        if node.log_file is None:
            node.log_file = open(node.log_path, "ab")  # noqa: SIM115 - closed in stop()
        node.process = subprocess.Popen(
            self._java("kafka.Kafka", [str(node.directory / "server.properties")]),
            stdin=subprocess.DEVNULL,
            stdout=node.log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # no JVM outlives a test session that was killed
        )

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what random-uuid prints)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # kafka-storage would read it as an option (1 in 64)
            return cluster_id


def _existing_cluster_id(root: Path) -> str | None:
    """The cluster id a node under ``root`` was formatted with (``meta.properties``), if any."""
    for meta in sorted(root.glob("node-*/data/meta.properties")):
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
    return None


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
