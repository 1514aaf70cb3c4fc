"""OTLP ingest benchmark: LLM-call-sized OTLP spans through the receiver into Kafka and ClickHouse.

    python benchmarks/otlp.py --json results/otlp.json

Runs on the embedded default (Tansu, chDB) in a temporary data directory, the receiver being the
``otlp`` member of an ``agentstream up`` stack (its own process):

1. ``otlp_http_spans_per_s``: client processes POST prebuilt ``ExportTraceServiceRequest``
   protobufs of 512 LLM-call spans (OTel GenAI attributes, ~2.8 KB of messages each) to
   ``/v1/traces``; a span counts once its request was answered 200, i.e. once Kafka acknowledged
   its normalised records. ``otlp_ingest_cpu_us_per_span`` is the receiver process's CPU over that
   run, per span, its worker processes (``otlp.workers``) included;
   ``otlp_ingest_main_cpu_us_per_span`` the main process's alone (HTTP, produce, acks).
2. ``otlp_kafka_spans_per_s``: such requests (256 spans each, under Kafka's 1 MB record limit)
   prefilled on a Collector topic (``otlp_proto``); from the first normalised span on the spans
   topic to the last one.
3. ``otlp_e2e_spans_per_s``: as 1, with the ClickHouse sink running, until every span is a row.

Redaction (``sdk.redact``, on by default in a real deployment) is off unless ``--redact``: on
these message texts it costs several times the rest of the path per span.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

SPANS_PER_REQUEST = 512
SPANS_PER_RECORD = 256
T0 = 1_790_000_000_000_000_000


def _messages() -> tuple[str, str]:
    """The ingest benchmark's LLM call: a system prompt, a user ticket and the reply (OTel parts)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ingest import _messages as messages

    return messages()


def build_request(index: int, inputs: str, outputs: str, n: int = SPANS_PER_REQUEST) -> bytes:
    """One ExportTraceServiceRequest of ``n`` LLM calls (10 per rollout), serialised."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    def kv(key: str, value: Any) -> KeyValue:
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        if isinstance(value, float):
            return KeyValue(key=key, value=AnyValue(double_value=value))
        return KeyValue(key=key, value=AnyValue(string_value=value))

    rng = random.Random(index)
    spans = []
    for i in range(n):
        rollout = f"bench-{index}-{i // 10}"
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gemma-3-270m",
            "gen_ai.response.model": "gemma-3-270m",
            "gen_ai.response.id": f"chatcmpl-{index}-{i}",
            "gen_ai.input.messages": inputs,
            "gen_ai.output.messages": outputs,
            "gen_ai.usage.input_tokens": 212,
            "gen_ai.usage.output_tokens": 31,
            "gen_ai.request.temperature": 0.7,
            "agentstream.rollout.id": rollout,
            "agentstream.attempt.id": f"{rollout}-a1",
        }
        start = T0 + (index * n + i) * 1_000_000
        spans.append(
            Span(
                trace_id=rng.randbytes(16),
                span_id=rng.randbytes(8),
                parent_span_id=rng.randbytes(8),
                name="chat gemma-3-270m",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=start,
                end_time_unix_nano=start + 350_000_000,
                attributes=[kv(k, v) for k, v in attributes.items()],
            )
        )
    resource = Resource(attributes=[kv("service.name", "bench-agent")])
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
    )
    return request.SerializeToString()


def _client(url: str, token: str, first: int, count: int, ready: Any, start: Any, out: Any) -> None:
    """One exporter process: POSTs its prebuilt requests one after the other."""
    import httpx

    inputs, outputs = _messages()
    bodies = [build_request(first + i, inputs, outputs) for i in range(count)]
    headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {token}"}
    ok = busy = 0
    with httpx.Client(timeout=120) as client:
        ready.put(True)
        start.wait()
        began = time.perf_counter()
        for body in bodies:
            while True:
                response = client.post(url, content=body, headers=headers)
                if response.status_code == 200:
                    ok += 1
                    break
                if response.status_code not in (429, 503):
                    raise RuntimeError(f"{response.status_code}: {response.content[:200]!r}")
                busy += 1
                time.sleep(float(response.headers.get("retry-after", "1")))
        out.put(
            {"ok": ok, "busy": busy, "seconds": time.perf_counter() - began, "ended": time.perf_counter()}
        )


def _post_all(url: str, token: str, clients: int, requests: int, offset: int) -> tuple[float, float, int]:
    """Run the client processes; (began, ended, 429s) in perf_counter time."""
    ctx = mp.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(url, token, offset + c * requests, requests, ready, start, out))
        for c in range(clients)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # imports and building the bodies happen before the clock starts
        ready.get(timeout=600)
    began = time.perf_counter()
    start.set()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    if sum(r["ok"] for r in results) != clients * requests:
        raise RuntimeError(f"not every request succeeded: {results}")
    return began, max(r["ended"] for r in results), sum(r["busy"] for r in results)


def _cpu_seconds(pid: int, *, workers: bool = True) -> float:
    """User + system CPU of a process (all its threads) and, with ``workers``, of its running child
    processes (the ingest's worker pool), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a worker that exited meanwhile
        return 0.0
    seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if workers:
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            seconds += sum(_cpu_seconds(int(child)) for child in task.read_text().split())
    return seconds


def _high_watermark(consumer: Any, topic: str, partitions: int) -> int:
    """Records on ``topic`` (the end offsets of its partitions)."""
    from agentstream.topics.io import high_watermarks

    return sum(high_watermarks(consumer, [(topic, p) for p in range(partitions)]).values())


def _stack(data_dir: Path, *, sink: bool, collector_topic: str, redact: bool, workers: int | None) -> Any:
    from agentstream.deploy.stack import Stack
    from agentstream.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        topic_prefix="bench.",
        partitions=8,
        sdk={"redact": ["email", "phone", "card"] if redact else []},
        otlp={"http_port": 0, "grpc_port": 0, "collector_topics": [collector_topic], "workers": workers},
        metrics={"enabled": False},
    )
    return Stack(settings, sink=sink, workers=0, promoter=False, dashboard=False, otlp=True)


def _receiver(stack: Any) -> tuple[str, str, int]:
    """(traces URL, token, pid) of the stack's OTLP member, once it serves, warmed up by one request
    (imports, Kafka metadata) of :data:`SPANS_PER_REQUEST` spans."""
    import httpx

    from agentstream.producers.otlp.receiver import receiver_token
    from agentstream.producers.otlp.service import OtlpState

    deadline = time.monotonic() + 60
    while (state := OtlpState.load(stack.data_dir)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the OTLP receiver did not start; see {stack.logs}/otlp.log")
        time.sleep(0.2)
    token = receiver_token(stack.settings)
    assert token is not None
    url = f"{state.http_url}/v1/traces"
    inputs, outputs = _messages()
    headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {token}"}
    warm_up = build_request(999_999, inputs, outputs)
    httpx.post(url, content=warm_up, headers=headers, timeout=120).raise_for_status()
    return url, token, state.pid


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=4, help="exporter processes")
    parser.add_argument("--requests", type=int, default=10, help="requests of 512 spans per client")
    parser.add_argument("--kafka-records", type=int, default=80, help="Collector records of 256 spans")
    parser.add_argument("--redact", action="store_true", help="redact PII as sdk.redact's default does")
    parser.add_argument("--workers", type=int, help="otlp.workers (default: the setting's default)")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from agentstream.clickhouse.connect import connect

    http_spans = args.clients * args.requests * SPANS_PER_REQUEST
    # 256 spans per Collector record: 512 would exceed Kafka's default 1 MB message limit
    kafka_spans = args.kafka_records * SPANS_PER_RECORD
    collector_topic = f"otlp_spans_{uuid.uuid4().hex[:6]}"
    figures: dict[str, Any] = {
        "spans_per_request": SPANS_PER_REQUEST,
        "clients": args.clients,
        "redact": args.redact,
        "workers": args.workers,
    }
    inputs, outputs = _messages()
    with tempfile.TemporaryDirectory(prefix="agentstream-bench-otlp-") as tmp:
        with _stack(
            Path(tmp) / "a",
            sink=False,
            collector_topic=collector_topic,
            redact=args.redact,
            workers=args.workers,
        ) as stack:
            settings = stack.resolved_settings()
            url, token, pid = _receiver(stack)
            figures["request_bytes"] = len(build_request(0, inputs, outputs))
            # 1. OTLP/HTTP
            cpu, main_cpu = _cpu_seconds(pid), _cpu_seconds(pid, workers=False)
            began, ended, busy = _post_all(url, token, args.clients, args.requests, 0)
            cpu, main_cpu = _cpu_seconds(pid) - cpu, _cpu_seconds(pid, workers=False) - main_cpu
            figures["otlp_ingest_main_cpu_us_per_span"] = round(main_cpu / http_spans * 1e6, 1)
            figures["otlp_http_spans_per_s"] = round(http_spans / (ended - began))
            figures["otlp_http_429s"] = busy
            figures["otlp_ingest_cpu_us_per_span"] = round(cpu / http_spans * 1e6, 1)
            print(
                f"OTLP/HTTP: {figures['otlp_http_spans_per_s']:,} spans/s, {figures['otlp_ingest_cpu_us_per_span']} µs CPU/span"
            )
            # 2. the Collector's Kafka topic
            spans_topic = settings.topic("spans")
            reader = Consumer(settings.consumer_config(f"bench-{uuid.uuid4().hex[:6]}"))
            before = _high_watermark(reader, spans_topic, settings.partitions)
            admin = AdminClient(settings.admin_config())
            for future in admin.create_topics([NewTopic(collector_topic, 4, 1)]).values():
                future.result(10)
            producer = Producer(settings.producer_config(**{"linger.ms": 5}))
            for i in range(args.kafka_records):
                record = build_request(10_000 + i, inputs, outputs, SPANS_PER_RECORD)
                producer.produce(collector_topic, record, str(i).encode())
            producer.flush(60)
            cpu = _cpu_seconds(pid)
            first_seen: tuple[float, int] | None = None
            deadline = time.monotonic() + 600
            while (count := _high_watermark(reader, spans_topic, settings.partitions) - before) < kafka_spans:
                if first_seen is None and count > 0:
                    first_seen = (time.perf_counter(), count)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {count} of {kafka_spans} spans from the Collector topic")
                time.sleep(0.02)
            ended = time.perf_counter()
            cpu = _cpu_seconds(pid) - cpu
            assert first_seen is not None
            figures["otlp_kafka_spans_per_s"] = round((kafka_spans - first_seen[1]) / (ended - first_seen[0]))
            reader.close()
            figures["otlp_kafka_cpu_us_per_span"] = round(cpu / kafka_spans * 1e6, 1)
            print(f"Collector topic: {figures['otlp_kafka_spans_per_s']:,} spans/s")
        if not args.skip_e2e:  # 3. into ClickHouse, with the sink running
            with _stack(
                Path(tmp) / "b",
                sink=True,
                collector_topic=collector_topic,
                redact=args.redact,
                workers=args.workers,
            ) as stack:
                stack.wait_ready()
                ch = connect(stack.resolved_settings())
                url, token, pid = _receiver(stack)
                began, _, _ = _post_all(url, token, args.clients, args.requests, 20_000)
                deadline = time.monotonic() + 600
                landed = http_spans + SPANS_PER_REQUEST  # and the warm-up request's
                while (rows := int(ch.query("SELECT count() FROM spans").result_rows[0][0])) < landed:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"only {rows} of {http_spans} spans landed")
                    time.sleep(0.05)
                figures["otlp_e2e_spans_per_s"] = round(http_spans / (time.perf_counter() - began))
                print(f"end to end: {figures['otlp_e2e_spans_per_s']:,} spans/s")
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
