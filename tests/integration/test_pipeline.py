"""Agent -> SDK -> Kafka -> sink -> ClickHouse, end to end, with failures injected.

The sink runs as its own process (`agentstream sink`), owning its chDB directory; the tests read
ClickHouse through the gateway it serves, as every other process does.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from agentstream.clickhouse.connect import connect
from agentstream.producers.client import AgentStream
from agentstream.schemas import AvroSchema, AvroSerializer, Reward, load_schema
from agentstream.settings import Settings
from agentstream.topics.admin import ensure_topics
from tests.helpers import SinkProcess, kill_broker, own_broker, read_topic, restart_broker, wait_for

pytestmark = pytest.mark.integration

MESSAGES = (
    '[{"role": "user", "parts": [{"type": "text", "content": "My parcel never arrived, order #4411."}]}]'
)


def _count(client: object, table: str, where: str = "1") -> tuple[int, int]:
    row = client.query(f"SELECT count(), uniqExact({_id(table)}) FROM {table} WHERE {where}").result_rows[0]  # type: ignore[attr-defined]
    return int(row[0]), int(row[1])


def _id(table: str) -> str:
    return {"spans": "span_id", "rewards": "reward_id", "rollout_events": "event_id"}[table]


@pytest.fixture
def sink(settings: Settings) -> Iterator[SinkProcess]:
    fast = settings.model_copy(update={"sink": settings.sink.model_copy(update={"session_timeout_ms": 2000})})
    process = SinkProcess(fast).start()
    yield process
    process.stop()


def _emit(
    client: AgentStream, thread: int, count: int, pace: float = 0.0, finished: list[float] | None = None
) -> None:
    with client.rollout({"thread": thread}) as rollout:
        for i in range(count):
            with client.span("chat gemma", kind="llm") as span:
                span.set_attributes(
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": "gemma-3-270m",
                        "gen_ai.input.messages": MESSAGES,
                    }
                )
                span.set_attribute("gen_ai.usage.input_tokens", 40 + i % 7)
                span.set_token_ids(range(40), range(12))
            if finished is not None:
                finished.append(time.perf_counter())
            if pace:
                time.sleep(pace)
        rollout.emit_reward(1.0)


def test_10k_spans_from_4_threads_land_exactly_once(settings: Settings, sink: SinkProcess) -> None:
    client = AgentStream(settings)
    try:
        threads = [threading.Thread(target=_emit, args=(client, t, 2_500)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.flush(60), client.stats
    finally:
        client.close()
    ch = connect(settings)
    where = "kind = 'llm'"
    assert wait_for(lambda: _count(ch, "spans", where)[0] >= 10_000, timeout=60)
    time.sleep(1.0)  # anything extra would land now
    assert _count(ch, "spans", where) == (10_000, 10_000)
    assert _count(ch, "spans") == (10_004, 10_004)  # plus one root span per rollout
    assert _count(ch, "rewards") == (4, 4)
    assert _count(ch, "rollout_events") == (8, 8)
    # the canonical GenAI columns are derived at insert time
    row = ch.query(
        "SELECT any(request_model), sum(input_tokens), min(length(prompt_token_ids)), any(service_name) "
        "FROM spans WHERE kind = 'llm'"
    ).result_rows[0]
    assert row[0] == "gemma-3-270m" and row[2] == 40 and row[3] == "agent"
    assert row[1] == sum(4 * (40 + i % 7) for i in range(2_500))
    # spans and rewards share their rollout's sequence: 1..n with no gap or repeat
    gaps = ch.query(
        "SELECT rollout_id, min(s) = 1 AND max(s) = count() AND uniqExact(s) = count() FROM "
        "(SELECT rollout_id, sequence_id AS s FROM spans UNION ALL SELECT rollout_id, sequence_id FROM rewards) "
        "GROUP BY rollout_id"
    ).result_rows
    assert len(gaps) == 4 and all(ok for _, ok in gaps)


def test_broker_stopped_mid_load_and_restarted_loses_nothing(broker_kind: str, tmp_path: Path) -> None:
    """The broker is SIGKILLed under load (Tansu loses its memory-only log, Apache Kafka keeps its
    storage) and restarted; agents never block, nothing is lost."""
    broker = own_broker(broker_kind, tmp_path).start()
    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers,
        data_dir=tmp_path / "data",
        topic_prefix="restart.",
        partitions=4,
        sink={"batch_max_seconds": 0.1, "session_timeout_ms": 2000},
        sdk={"delivery_timeout_ms": 3000},
    )
    ensure_topics(settings)
    sink = SinkProcess(settings).start()
    client = AgentStream(settings)
    finished: list[float] = []
    try:
        threads = [threading.Thread(target=_emit, args=(client, t, 1_500, 0.002, finished)) for t in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        kill_broker(broker)  # mid-load: on Tansu everything the broker held is gone
        killed_at = time.perf_counter()
        time.sleep(2.0)
        restarted_at = time.perf_counter()
        # same address; after Tansu's empty log the operator (here the test) re-creates topics
        restart_broker(broker)
        ensure_topics(settings)
        for t in threads:
            t.join()
        assert client.flush(90), client.stats
        assert client.stats.outages >= 1 and client.stats.spooled > 0, client.stats
        ch = connect(settings)
        assert wait_for(lambda: _count(ch, "spans", "kind = 'llm'")[0] >= 6_000, timeout=90), sink.status()
        time.sleep(1.0)
        assert _count(ch, "spans", "kind = 'llm'") == (6_000, 6_000), sink.status()
        assert _count(ch, "spans") == (6_004, 6_004)
        assert _count(ch, "rewards") == (4, 4)
    finally:
        client.close()
        sink.stop()
        broker.stop()
    assert len(finished) == 6_000
    # Agents never block on the broker: spans kept being finished all through the outage. Emitting
    # 1,500 paced spans per thread takes > 3 s, so a delivery that waited for the broker (or for
    # the 3 s delivery timeout) would leave the 2 s window empty. How long one emit takes is a
    # figure for benchmarks/ingest.py, not an assertion here.
    during_outage = sum(killed_at < done < restarted_at for done in finished)
    assert during_outage >= 100, f"only {during_outage} spans were finished while the broker was down"


def test_sink_killed_mid_batch_restarts_without_loss_or_duplicates(settings: Settings) -> None:
    fast = settings.model_copy(
        update={
            "sink": settings.sink.model_copy(update={"session_timeout_ms": 2000, "batch_max_rows": 2_000})
        }
    )
    sink = SinkProcess(fast).start()
    client = AgentStream(settings)
    try:
        threads = [threading.Thread(target=_emit, args=(client, t, 5_000)) for t in range(4)]
        for t in threads:
            t.start()
        ch = connect(fast)
        kills = 0
        for _ in range(3):
            landed = wait_for(lambda ch=ch: _count(ch, "spans")[0] > 0 and sink.status(), timeout=60)
            assert landed
            time.sleep(random.uniform(0.05, 0.4))
            sink.kill()  # SIGKILL: no flush, no commit, maybe half way through an insert
            kills += 1
            sink.start()
            ch = connect(fast)
        for t in threads:
            t.join()
        assert client.flush(60)
    finally:
        client.close()
    ch = connect(fast)
    assert wait_for(lambda: _count(ch, "spans", "kind = 'llm'")[0] >= 20_000, timeout=90), sink.status()
    time.sleep(1.5)
    try:
        assert kills == 3
        assert _count(ch, "spans", "kind = 'llm'") == (20_000, 20_000)
        assert _count(ch, "spans") == (20_004, 20_004)
        assert _count(ch, "rollout_events") == (8, 8)
    finally:
        sink.stop()


def test_malformed_records_go_to_the_dead_letter_topic_and_the_rest_flows(
    settings: Settings, sink: SinkProcess
) -> None:
    topic = settings.topic("rewards")
    schema = Reward.avro_schema()
    good = [
        Reward(reward_id=f"rw-{i}", rollout_id=f"ro-{i}", value=i / 10, timestamp=1_700_000_000_000_000 + i)
        for i in range(10)
    ]
    encode = AvroSerializer(schema)
    valid = encode(good[0].to_avro())
    foreign = AvroSchema.from_definition(
        {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]}
    )
    span_schema = load_schema("span")
    bad = {
        b"not-avro": b'{"reward": 1}',
        b"truncated": valid[:-4],
        b"trailing": valid + b"\x02\x04",
        b"unknown-schema": AvroSerializer(foreign)({"x": 1}),
        b"wrong-topic": AvroSerializer(span_schema)(
            {"trace_id": "t", "span_id": "s", "rollout_id": "r", "name": "n", "start_time": 1, "end_time": 2}
        ),
        b"empty": b"",
    }
    producer = Producer(settings.producer_config())
    for i, reward in enumerate(good):
        producer.produce(topic, encode(reward.to_avro()), reward.rollout_id.encode())
        if i < len(bad):
            key, value = list(bad.items())[i]
            producer.produce(topic, value, key)
    producer.flush(10)

    ch = connect(settings)
    assert wait_for(lambda: _count(ch, "rewards")[0] >= 10, timeout=30), sink.status()
    assert sorted(r[0] for r in ch.query("SELECT reward_id FROM rewards").result_rows) == sorted(
        r.reward_id for r in good
    )

    dead = read_topic(settings, settings.topic("dead-letter"), expected=len(bad), decode=False)
    reasons = {}
    for message in dead:
        headers = dict(message.headers())
        assert headers["agentstream-dlq-source"].decode().startswith(f"{topic}/")
        reasons[message.key()] = headers["agentstream-dlq-reason"].decode()
        assert (message.value() or b"") == bad[message.key()]  # the record itself, for replay
    assert set(reasons) == set(bad)
    assert "not an Avro" in reasons[b"not-avro"]
    assert "unknown writer schema" in reasons[b"unknown-schema"]
    assert "io.agentstream.Span" in reasons[b"wrong-topic"]
    assert "empty" in reasons[b"empty"]
    assert "undecodable" in reasons[b"truncated"] or "EOF" in reasons[b"truncated"]
    assert "trailing" in reasons[b"trailing"] or "ClickHouse" in reasons[b"trailing"]

    # the dead letters are queryable too, with their reasons
    assert wait_for(lambda: int(ch.command("SELECT count() FROM dead_letters")) >= len(bad), timeout=30)
    rows = dict(ch.query("SELECT key, reason FROM dead_letters").result_rows)
    assert set(rows) == {k.decode() for k in bad}
    assert rows["not-avro"] == reasons[b"not-avro"]
