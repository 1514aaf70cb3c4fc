"""Ingest benchmark: LLM-call-sized spans from several agent processes into ClickHouse.

    python benchmarks/ingest.py --spans 100000 --json results/ingest.json
    python benchmarks/ingest.py --broker apache --json results/ingest-apache.json

Runs on the embedded default (Tansu + chDB) in a temporary data directory, or with
``--broker apache`` on a one-node Apache Kafka (KRaft, ``agentstream.deploy.apache_kafka``; jars
from Maven Central on first use) that the benchmark starts beside chDB:

1. ``raw_produce_per_s``: librdkafka alone (the SDK's producer settings) sending records of the
   same size from the same number of processes: the ceiling for the SDK.
2. Throughput: every process emits its share of spans through the SDK as fast as it can.
   ``sdk_emit_us_p50/p99`` time one whole span in the agent's thread (open, set attributes and
   token ids, close); ``e2e_spans_per_s`` is spans over the time from the first emit to the
   moment the last one is a ClickHouse row.
3. Freshness (measured first, on a quiet system): a steady load of 5,000 spans/s for 20 s;
   ``freshness_p99_s`` is the 99th percentile of (row inserted - span emitted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SYSTEM = (
    "You are the routing assistant of an online shop's support desk. Read the customer's ticket and "
    "decide which queue handles it: billing, technical, shipping or account. Then call create_ticket "
    "with a JSON object holding queue, priority and a one-line summary. "
) * 6
USER = (
    "Hello, I ordered a pair of running shoes two weeks ago (order #48213) and the tracking page has "
    "said 'label created' ever since. I paid for express delivery. Can you tell me where my parcel "
    "is, and refund the express fee if it was not used? "
) * 4
ASSISTANT = '{"queue": "shipping", "priority": "normal", "summary": "Express order #48213 not shipped"}'


def _messages() -> tuple[str, str]:
    from agentstream.schemas import genai

    inputs = genai.openai_messages_to_otel(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    )
    outputs = [
        {**genai.openai_message_to_otel({"role": "assistant", "content": ASSISTANT}), "finish_reason": "stop"}
    ]
    return json.dumps(inputs), json.dumps(outputs)


def _settings(bootstrap: str, data_dir: Path) -> Any:
    from agentstream.settings import Settings

    return Settings(bootstrap_servers=bootstrap, data_dir=data_dir, topic_prefix="bench.", partitions=8)


# ---- worker processes ----------------------------------------------------------------------------------
def _raw_producer(bootstrap: str, topic: str, count: int, size: int, start: Any, out: Any) -> None:
    from confluent_kafka import Producer

    from agentstream.settings import Settings

    producer = Producer(Settings(bootstrap_servers=bootstrap).producer_config())
    payload = os.urandom(size // 2).hex().encode()
    keys = [f"ro-{i}".encode() for i in range(256)]
    start.wait()
    began = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, payload, keys[i & 255])
                break
            except BufferError:
                producer.poll(0.01)
        if i & 1023 == 0:
            producer.poll(0)
    producer.flush(120)
    out.put(time.perf_counter() - began)


def _sdk_producer(
    bootstrap: str, data_dir: str, phase: str, worker: int, count: int, rate: float, start: Any, out: Any
) -> None:
    import gc

    from agentstream.producers.client import AgentStream
    from agentstream.producers.tracer import Rollout

    settings = _settings(bootstrap, Path(data_dir) / f"agent-{phase}-{worker}")
    settings = settings.model_copy(
        update={"sdk": settings.sdk.model_copy(update={"service_name": f"bench-{worker}"})}
    )
    client = AgentStream(settings)
    inputs, outputs = _messages()
    rng = random.Random(worker)
    prompt_ids = [rng.randrange(262_144) for _ in range(200)]
    response_ids = [rng.randrange(262_144) for _ in range(80)]
    timings = [0.0] * count
    gc.collect()
    start.wait()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    interval = 1.0 / rate if rate else 0.0
    began = time.perf_counter()
    clock = time.perf_counter
    # Ten LLM calls per rollout, as an agent makes them: keys (rollout ids) spread over the
    # partitions. The rollouts are not entered, so no lifecycle events add to the span count.
    rollouts = [
        Rollout(client, rollout_id=f"bench-{phase}-{worker}-{os.getpid()}-{r}")
        for r in range((count + 9) // 10)
    ]
    for i in range(count):
        if interval:
            due = began + i * interval
            delay = due - clock()
            if delay > 0:
                time.sleep(delay)
        t0 = clock()
        with client.span("chat gemma-3-270m", kind="llm", rollout=rollouts[i // 10]) as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gemma-3-270m",
                    "gen_ai.response.model": "gemma-3-270m",
                    "gen_ai.response.id": f"chatcmpl-{worker}-{i}",
                    "gen_ai.usage.input_tokens": 200,
                    "gen_ai.usage.output_tokens": 80,
                    "gen_ai.response.finish_reasons": ("stop",),
                    "gen_ai.input.messages": inputs,
                    "gen_ai.output.messages": outputs,
                }
            )
            span.set_token_ids(prompt_ids, response_ids)
        timings[i] = clock() - t0
    emitted = clock() - began
    delivered = client.flush(300)
    flushed = clock() - began
    stats = client.stats
    client.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put(
        {
            "timings": timings,
            "emit_s": emitted,
            "flush_s": flushed,
            "delivered": delivered,
            "spooled": stats.spooled,
            "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
        }
    )


# ---- orchestration ---------------------------------------------------------------------------------------
def _run_processes(target: Any, args_for: Any, n: int) -> tuple[float, list[Any]]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), start, out)) for i in range(n)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # imports and producer start-up happen before the clock starts
    began = time.perf_counter()
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return began, results


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process, from /proc (Linux)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _count(ch: Any, where: str) -> int:
    return int(ch.query(f"SELECT count() FROM spans WHERE {where}").result_rows[0][0])


def _wait_rows(ch: Any, where: str, expected: int, diagnose: Any, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _count(ch, where) >= expected:
            return time.perf_counter()
        time.sleep(0.05)
    diagnose()
    raise TimeoutError(f"only {_count(ch, where)} of {expected} spans landed")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=100_000, help="spans in the throughput run")
    parser.add_argument("--producers", type=int, default=4, help="agent processes")
    parser.add_argument("--freshness-seconds", type=float, default=20.0)
    parser.add_argument("--freshness-rate", type=float, default=5_000, help="spans/s of the steady load")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--broker", choices=("tansu", "apache"), default="tansu", help="embedded Tansu or Apache Kafka"
    )
    args = parser.parse_args(argv)

    from agentstream.clickhouse.connect import connect
    from agentstream.deploy.stack import Stack
    from agentstream.settings import Settings
    from agentstream.topics.admin import ensure_topics
    from agentstream.topics.catalogue import TopicSpec

    n, p = args.spans, args.producers
    with tempfile.TemporaryDirectory(prefix="agentstream-bench-") as tmp, contextlib.ExitStack() as brokers:
        data_dir = Path(tmp)
        external, external_pid = _start_broker(args.broker, data_dir, brokers)
        with Stack(
            Settings(
                data_dir=data_dir / "stack", topic_prefix="bench.", partitions=8, bootstrap_servers=external
            ),
            workers=0,
        ) as stack:
            stack.wait_ready()
            bootstrap = stack.bootstrap_servers
            settings = stack.resolved_settings()
            ensure_topics(settings, (TopicSpec("raw", "-", None, "delete", None, "benchmark baseline"),))
            inputs, outputs = _messages()
            size = _span_size(settings, inputs, outputs)

            began, durations = _run_processes(
                _raw_producer, lambda i: (bootstrap, settings.topic("raw"), n // p, size), p
            )
            raw_wall = max(durations)
            print(f"raw librdkafka: {n // p * p / raw_wall:,.0f} records/s of {size} B from {p} processes")

            ch = connect(settings)
            # Freshness first, at a steady load on a quiet system (after the throughput burst,
            # its background merges would be measured instead).
            rate = args.freshness_rate / p
            per_worker = int(rate * args.freshness_seconds)
            fresh_began, fresh = _run_processes(
                _sdk_producer, lambda i: (bootstrap, str(data_dir), "fresh", i, per_worker, rate), p
            )
            where = "rollout_id LIKE 'bench-fresh-%' AND kind = 'llm'"
            _wait_rows(ch, where, per_worker * p, lambda: _diagnose(ch, settings, stack))
            freshness = ch.query(
                "SELECT quantiles(0.5, 0.99)(dateDiff('microsecond', end_time, ingested_at) / 1e6), max("
                "dateDiff('microsecond', end_time, ingested_at) / 1e6) FROM spans WHERE " + where
            ).result_rows[0]
            timeline = ch.query(
                "SELECT toStartOfSecond(end_time) AS s, count(), round(quantile(0.99)(dateDiff('microsecond', end_time, "
                "ingested_at) / 1e6), 3) FROM spans WHERE " + where + " GROUP BY s ORDER BY s"
            ).result_rows
            print("freshness per second (spans, p99 s):", [(n, p99) for _, n, p99 in timeline])
            sink_pid = stack.children[0].status.pid
            broker_pid = stack.broker.pid if stack.broker else external_pid
            cpu_sink, cpu_broker = _cpu_seconds(sink_pid), _cpu_seconds(broker_pid)
            began, results = _run_processes(
                _sdk_producer, lambda i: (bootstrap, str(data_dir), "tput", i, n // p, 0.0), p
            )
            total = n // p * p
            landed = _wait_rows(
                ch,
                "rollout_id LIKE 'bench-tput-%' AND kind = 'llm'",
                total,
                lambda: _diagnose(ch, settings, stack),
            )
            e2e = total / (landed - began)
            cpu = {
                "wall_s": round(landed - began, 2),
                "agents_s": round(sum(r["cpu_s"] for r in results), 2),
                "broker_s": round(_cpu_seconds(broker_pid) - cpu_broker, 2),
                "sink_s": round(_cpu_seconds(sink_pid) - cpu_sink, 2),
            }
            cpu["us_per_span"] = {k[:-2]: round(v / total * 1e6, 1) for k, v in cpu.items() if k != "wall_s"}
            timings = sorted(t for r in results for t in r["timings"])
            emit_rate = total / max(r["emit_s"] for r in results)
            delivered_s = max(r["flush_s"] for r in results)
            print(f"SDK: emit {emit_rate:,.0f} spans/s, p50 {_pct(timings, 50) * 1e6:.1f} µs, "
                  f"p99 {_pct(timings, 99) * 1e6:.1f} µs; end to end {e2e:,.0f} spans/s")  # fmt: skip

            stored = ch.query(
                "SELECT count(), uniqExact(span_id), avg(length(prompt_token_ids) + length(response_token_ids)) "
                "FROM spans WHERE rollout_id LIKE 'bench-tput-%' AND kind = 'llm'"
            ).result_rows[0]
            sink_status = stack.sink_status() or {}
            print("sink gap events:", _gap_log(stack))

    figures = {
        "broker": args.broker,
        "spans": total,
        "producers": p,
        "record_bytes": size,
        "raw_produce_per_s": round(n // p * p / raw_wall),
        "sdk_emit_us_p50": round(_pct(timings, 50) * 1e6, 2),
        "sdk_emit_us_p99": round(_pct(timings, 99) * 1e6, 2),
        "sdk_emit_spans_per_s": round(emit_rate),
        "sdk_delivered_spans_per_s": round(total / delivered_s),
        "e2e_spans_per_s": round(e2e),
        "freshness_p50_s": round(freshness[0][0], 3),
        "freshness_p99_s": round(freshness[0][1], 3),
        "freshness_max_s": round(freshness[1], 3),
        "freshness_load_spans_per_s": round(rate * p),
        "rows_stored": int(stored[0]),
        "rows_unique": int(stored[1]),
        "token_ids_per_span": float(stored[2]),
        "cpu_throughput_run": cpu,
        "sink": sink_status,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


def _start_broker(kind: str, data_dir: Path, stack: contextlib.ExitStack) -> tuple[str | None, int | None]:
    """``(bootstrap servers, broker pid)`` of an Apache Kafka node started for the run, or
    ``(None, None)`` for Tansu, which the agentstream stack embeds."""
    if kind == "tansu":
        return None, None
    from agentstream.deploy.apache_kafka import KafkaCluster

    cluster = stack.enter_context(KafkaCluster(brokers=1, data_dir=data_dir / "kafka"))
    process = cluster.nodes[0].process
    return cluster.bootstrap_servers, process.pid if process is not None else None


def _diagnose(ch: Any, settings: Any, stack: Any) -> None:
    """Where are the missing spans: in Kafka but not in ClickHouse, or never in Kafka?"""
    from collections import Counter

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = settings.topic("spans")
    consumer = Consumer(settings.consumer_config("bench-diagnose"))
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    in_kafka: Counter[int] = Counter()
    idle = time.monotonic()
    while time.monotonic() - idle < 3:
        for message in consumer.consume(1000, 0.2):
            if not message.error():
                in_kafka[message.partition()] += 1
                idle = time.monotonic()
    consumer.close()
    stored = dict(ch.query("SELECT _partition, count() FROM spans GROUP BY _partition").result_rows)
    offsets = ch.query(
        "SELECT _partition, max(_offset) FROM spans GROUP BY _partition ORDER BY 1"
    ).result_rows
    print(
        "records per partition, kafka vs clickhouse:",
        {p: (in_kafka[p], stored.get(p, 0)) for p in sorted(in_kafka)},
    )
    print("max stored offsets:", offsets, "sink:", stack.sink_status())
    for partition, found in ch.query(
        "SELECT _partition, groupArray(_offset) FROM spans GROUP BY _partition"
    ).result_rows:
        missing = sorted(set(range(max(found) + 1)) - set(found))
        if missing:
            print(f"partition {partition}: offsets missing from ClickHouse: {missing[:50]}")
    log = stack.logs / "sink.log"
    print(
        "sink log warnings:",
        [line for line in log.read_text().splitlines() if "WARNING" in line or "ERROR" in line][-30:],
    )


def _gap_log(stack: Any) -> list[str]:
    return [line for line in (stack.logs / "sink.log").read_text().splitlines() if "gap" in line]


def _span_size(settings: Any, inputs: str, outputs: str) -> int:
    """Bytes of one benchmark span as the SDK encodes it (the raw baseline sends the same size)."""
    from agentstream.producers.records import RecordEncoder
    from agentstream.producers.tracer import ActiveSpan

    encoder = RecordEncoder(
        settings, {"service.name": "bench-0", "host.name": "x" * 12, "process.pid": "12345"}
    )
    span = ActiveSpan(None, "chat gemma-3-270m", "llm", None, None, None)  # type: ignore[arg-type]
    span.set_attributes(
        {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gemma-3-270m",
            "gen_ai.response.model": "gemma-3-270m", "gen_ai.response.id": "chatcmpl-0-0", "gen_ai.usage.input_tokens": 200,
            "gen_ai.usage.output_tokens": 80, "gen_ai.response.finish_reasons": ("stop",),
            "gen_ai.input.messages": inputs, "gen_ai.output.messages": outputs,
        }
    )  # fmt: skip
    span.set_token_ids([200_000] * 200, [200_000] * 80)
    span.end_time = span.start_time + 1
    return len(encoder.span(span).value)


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return (
        statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q) - 1]
        if q < 100
        else sorted_values[-1]
    )


if __name__ == "__main__":
    main()
