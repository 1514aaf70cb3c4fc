"""Broker faults on a 3-node Apache Kafka cluster, at a larger size than the test.

    python benchmarks/broker_faults.py --json results/broker_faults.json

The scenario of ``tests/integration/test_broker_faults.py`` (see ``tests/fault_scenario.py``):
replication factor 3, ``min.insync.replicas=2``, ``acks=all``; an agent emits rollouts (LLM calls
and a reward each) from ``--agents`` threads while a sink and a stream worker run; the leaders of
the spans and triplets partitions are SIGKILLed and brought back, then the three nodes are
restarted one by one. Prints, per phase and in total: sent, in_clickhouse, lost, duplicate_rows
(without FINAL; ``duplicate_rows_final`` with it), triplets, missing/duplicate/wrong triplets, and
the latency of the emit calls that returned while a node was down (µs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fault_scenario, from the repo root

from rich.console import Console  # noqa: E402

from agentstream.deploy.apache_kafka import KafkaCluster  # noqa: E402
from agentstream.producers.client import AgentStream  # noqa: E402
from tests.fault_scenario import (  # noqa: E402
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

console = Console(stderr=True)


def run(agents: int, calls: int, pace_s: float, partitions: int, down_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="agentstream-faults-") as tmp:
        root = Path(tmp)
        with KafkaCluster(brokers=3, data_dir=root / "kafka") as cluster:
            settings = cluster_settings(cluster, root / "data", f"bf{uuid.uuid4().hex[:6]}.", partitions)
            with running_stack(settings) as stack:
                client = AgentStream(settings)
                loops = [EmitLoop(client, agent=f"a{i}", calls=calls, pace_s=pace_s) for i in range(agents)]
                outages: list[Outage] = []
                started = time.perf_counter()
                try:
                    for loop in loops:
                        loop.start()
                    time.sleep(3.0)  # warm-up rollouts on the healthy cluster
                    outages += leader_kills(cluster, settings, loops, down_s)
                    outages += rolling_restart(cluster, settings, loops, down_s)
                    for loop in loops:
                        loop.phase = "after"
                    time.sleep(3.0)
                finally:
                    for loop in loops:
                        loop.stop()
                    flushed = client.flush(180)
                    client.close()
                console.print(f"faults done in {time.perf_counter() - started:.0f}s; waiting for ClickHouse")
                sent = [s for loop in loops for s in loop.sent]
                waited = time.perf_counter()
                # until everything landed, or no count grew for 120 s (stuck, not merely behind)
                landed = wait_landed(settings, sent, 1800, stall_s=120)
                waited = time.perf_counter() - waited
                return {
                    "agents": agents,
                    "partitions": partitions,
                    "flushed": flushed,
                    "landed": landed,
                    "landed_wait_s": round(waited, 1),
                    "counts": count(settings, sent),
                    "emits": emit_figures(loops, outages),
                    "sdk": {
                        "spooled": client.stats.spooled,
                        "replayed": client.stats.replayed,
                        "outages": client.stats.outages,
                        "dead_lettered": client.stats.dead_lettered,
                    },
                    "outages": [
                        {
                            "phase": o.phase,
                            "action": o.action,
                            "node": o.node_id,
                            "reason": o.reason,
                            "down_s": round(o.up_at - o.down_at, 1),
                        }
                        for o in outages
                    ],
                    "sink_and_worker_unrestarted": stack.alive_unrestarted(),
                }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=4, help="agent threads emitting rollouts")
    parser.add_argument("--calls", type=int, default=3, help="LLM calls per rollout")
    parser.add_argument(
        "--pace", type=float, default=0.005, help="seconds each agent sleeps between rollouts"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--down", type=float, default=5.0, help="seconds each node stays down")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = run(args.agents, args.calls, args.pace, args.partitions, args.down)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
