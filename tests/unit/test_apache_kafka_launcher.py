"""The Apache Kafka launcher's node configuration (the JVMs themselves run in the --broker=apache tests)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from agentstream.deploy.apache_kafka import KAFKA_VERSION
from agentstream.deploy.apache_kafka.classpath import POM
from agentstream.deploy.apache_kafka.cluster import KafkaCluster, KafkaNode, _existing_cluster_id

NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _cluster(tmp_path: Path, brokers: int) -> KafkaCluster:
    cluster = KafkaCluster(brokers=brokers, data_dir=tmp_path, port=29092)
    cluster.nodes = [
        KafkaNode(i, 29092 + i - 1, 29192 + i - 1, tmp_path / f"node-{i}") for i in range(1, brokers + 1)
    ]
    return cluster


def test_the_pom_resolves_the_server_artifact_of_the_launchers_version() -> None:
    project = ET.parse(POM).getroot()
    assert project.findtext("m:properties/m:kafka.version", namespaces=NS) == KAFKA_VERSION
    artifacts = {
        d.findtext("m:artifactId", namespaces=NS) for d in project.iterfind("m:dependencies/m:dependency", NS)
    }
    assert {"kafka_2.13", "log4j-slf4j2-impl", "log4j-core", "slf4j-api"} <= artifacts


def test_three_nodes_form_one_quorum_with_safe_replication(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, 3)
    properties = [cluster._broker_properties(node) for node in cluster.nodes]
    voters = "1@127.0.0.1:29192,2@127.0.0.1:29193,3@127.0.0.1:29194"
    for node, props in zip(cluster.nodes, properties, strict=True):
        assert props["node.id"] == str(node.node_id)
        assert props["controller.quorum.voters"] == voters
        assert props["advertised.listeners"] == f"CLIENT://127.0.0.1:{node.port}"
        assert props["process.roles"] == "broker,controller"
        assert props["log.dirs"] == str(node.directory / "data")
        # what acks=all needs to survive one node down
        assert props["default.replication.factor"] == "3"
        assert props["min.insync.replicas"] == "2"
        assert props["offsets.topic.replication.factor"] == "3"
        assert props["transaction.state.log.min.isr"] == "2"
        assert props["unclean.leader.election.enable"] == "false"
    assert cluster.bootstrap_servers == "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"


def test_one_node_needs_no_replicas(tmp_path: Path) -> None:
    props = _cluster(tmp_path, 1)._broker_properties(KafkaNode(1, 29092, 29192, tmp_path / "node-1"))
    assert props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"
    assert props["listener.security.protocol.map"] == "CLIENT:PLAINTEXT,CONTROLLER:PLAINTEXT"


def test_properties_given_win_over_the_defaults(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, 1)
    cluster.properties = {"log.segment.bytes": "1048576"}
    assert cluster._broker_properties(cluster.nodes[0])["log.segment.bytes"] == "1048576"


def test_a_formatted_data_dir_keeps_its_cluster_id(tmp_path: Path) -> None:
    assert _existing_cluster_id(tmp_path) is None
    meta = tmp_path / "node-1" / "data" / "meta.properties"
    meta.parent.mkdir(parents=True)
    meta.write_text("#\nnode.id=1\ncluster.id=AbCdEfGhIjKlMnOpQrStUv\nversion=1\n")
    assert _existing_cluster_id(tmp_path) == "AbCdEfGhIjKlMnOpQrStUv"
