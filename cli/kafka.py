"""``agentstream kafka``: Apache Kafka (KRaft) on this machine, for users with Java 17 and Maven.

The embedded Tansu broker (``agentstream broker``, ``agentstream up``) needs nothing; this runs the
real thing, from Apache Kafka's own jars on Maven Central, when you want to try agentstream on the
broker you will deploy on: one combined broker, or a 3-node cluster (replication 3,
``min.insync.replicas`` 2) that survives a node going down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentstream.cli.context import console, err_console, state, stop_event

__all__ = ["kafka_app"]

kafka_app = typer.Typer(
    help="Apache Kafka (KRaft) from Maven Central: resolve its jars, run a broker or a cluster."
)


@kafka_app.command("fetch")
def fetch(
    version: Annotated[
        str | None, typer.Option(help="Apache Kafka version (default: the tested one).")
    ] = None,
) -> None:
    """Resolve the broker's jars with Maven into the cache (~/.cache/agentstream/kafka) and print where."""
    from agentstream.deploy.apache_kafka import KAFKA_VERSION, KafkaSetupError, resolve_classpath

    try:
        libs = resolve_classpath(version or KAFKA_VERSION, quiet=False)
    except KafkaSetupError as e:
        err_console.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    console.print(f"Apache Kafka {version or KAFKA_VERSION}: {len(list(libs.glob('*.jar')))} jars in {libs}")


@kafka_app.command("run")
def run(
    brokers: Annotated[int, typer.Option(min=1, max=5, help="Nodes (each broker + controller).")] = 1,
    port: Annotated[
        int,
        typer.Option(help="Client port of node 1 (node i: port+i-1; controllers: +100); 0 picks free ports."),
    ] = 9092,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the nodes keep their logs (kept across runs); default <data_dir>/apache-kafka."
        ),
    ] = None,
    heap: Annotated[str, typer.Option(help="JVM heap of each node.")] = "512m",
) -> None:
    """Run Apache Kafka on 127.0.0.1 until Ctrl-C (PLAINTEXT, loopback only).

    Point agentstream at it with AGENTSTREAM_BOOTSTRAP_SERVERS (printed); with --brokers 3 also set
    AGENTSTREAM_REPLICATION_FACTOR=3 and AGENTSTREAM_MIN_INSYNC_REPLICAS=2.
    """
    from agentstream.deploy.apache_kafka import KafkaCluster, KafkaSetupError

    directory = data_dir or state.settings.data_dir / "apache-kafka"
    cluster = KafkaCluster(brokers=brokers, data_dir=directory, port=port, heap=heap)
    stop = stop_event()
    try:
        cluster.start()
    except KafkaSetupError as e:
        err_console.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    try:
        console.print(
            f"Apache Kafka ({brokers} node(s)) on [bold]{cluster.bootstrap_servers}[/], data in {directory}"
            " — Ctrl-C to stop"
        )
        console.print(f"  export AGENTSTREAM_BOOTSTRAP_SERVERS={cluster.bootstrap_servers}")
        if brokers >= 3:
            console.print("  export AGENTSTREAM_REPLICATION_FACTOR=3 AGENTSTREAM_MIN_INSYNC_REPLICAS=2")
        while not stop.wait(0.5):
            dead = [node.node_id for node in cluster.nodes if not node.is_running()]
            if dead:
                err_console.print(f"[red]Kafka node(s) {dead} exited; logs: {directory}/node-*/server.log[/]")
                raise typer.Exit(1)
    finally:
        cluster.stop()
