"""Broker faults on a 3-node Apache Kafka cluster: nothing lost, no wrong triplet, nobody blocked.

Replication factor 3, ``min.insync.replicas=2``, the SDK's idempotent ``acks=all`` producer. While
an agent emits rollouts continuously and a stream worker joins them into triplets, the leader of
the spans partition, then of the triplets partition, is SIGKILLed and brought back; then all three
nodes are restarted one by one. The scenario lives in ``tests/fault_scenario.py`` (the benchmark
``benchmarks/broker_faults.py`` runs it larger and prints the counts).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from agentstream.deploy.apache_kafka import KafkaCluster
from agentstream.producers.client import AgentStream
from agentstream.topics.catalogue import changelog_topics
from tests.fault_scenario import (
    EmitLoop,
    Outage,
    cluster_settings,
    count,
    emit_figures,
    leader_kills,
    rolling_restart,
    running_stack,
    wait_landed,
)

pytestmark = [pytest.mark.integration, pytest.mark.apache_only]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    with KafkaCluster(brokers=3, data_dir=tmp_path_factory.mktemp("kafka3")) as running:
        yield running


def _topic_config(cluster: KafkaCluster, topic: str) -> dict[str, str]:
    admin = AdminClient(cluster.admin_config())
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(timeout=15)
    return {name: entry.value for name, entry in config.items()}


# five node restarts of a JVM cluster, on a CI machine shared with other jobs: minutes, not seconds
@pytest.mark.timeout(1800)
def test_leader_kills_and_a_rolling_restart_lose_nothing(cluster: KafkaCluster, tmp_path: Path) -> None:
    settings = cluster_settings(cluster, tmp_path / "data", f"f{uuid.uuid4().hex[:8]}.", partitions=2)
    assert settings.producer_config()["acks"] == "all" and settings.producer_config()["enable.idempotence"]
    with running_stack(settings) as stack:
        # every topic the stack writes, the workers' changelogs included, keeps acks=all safe
        metadata = AdminClient(cluster.admin_config()).list_topics(timeout=15)
        changelogs = [settings.topic(spec.name) for spec in changelog_topics(settings.streams.app_id)]
        for topic in [
            settings.topic("spans"),
            settings.topic("triplets"),
            settings.topic("rollout-state"),
            *changelogs,
        ]:
            assert _topic_config(cluster, topic)["min.insync.replicas"] == "2", topic
            assert all(len(p.replicas) == 3 for p in metadata.topics[topic].partitions.values()), topic

        client = AgentStream(settings)
        loop = EmitLoop(client, calls=2, pace_s=0.05)
        outages: list[Outage] = []
        try:
            loop.start()
            outages += leader_kills(cluster, settings, [loop], down_s=4.0)
            outages += rolling_restart(cluster, settings, [loop], down_s=2.0)
            loop.phase = "after"
            time.sleep(3.0)  # a few rollouts on the healed cluster
        finally:
            loop.stop()
            assert client.flush(120), client.stats
            client.close()
        assert wait_landed(settings, loop.sent, 600), count(settings, loop.sent)["total"]
        counts = count(settings, loop.sent)
        figures = emit_figures([loop], outages)
        report = f"counts {counts}\nemits {figures}\nSDK {client.stats}\noutages {outages}"
        total = counts["total"]
        assert total["lost"] == 0 and total["missing_triplets"] == 0, report
        assert total["wrong_triplets"] == 0 and total["duplicate_triplets"] == 0, report
        assert total["duplicate_rows_final"] == 0, (
            report
        )  # non-FINAL duplicates: collapsed by FINAL, reported
        assert counts["leader_kills"]["sent"] > 0 and counts["rolling_restart"]["sent"] > 0, report
        # The agent never waited on the cluster: emits kept returning while a node was down, none raised.
        assert figures["emits_during_outage"] > 0 and not loop.errors, report
        assert {o.action for o in outages} == {"kill", "stop"} and len(outages) == 5, report
        # sink and worker carried on: the same processes, still running, never restarted by us
        assert stack.alive_unrestarted(), report
