"""Every component survives every record: the sink and the stream worker, fed mixed good and bad
records on the real broker (the sink into its own chDB), keep running; every good record lands and
every bad one is dead-lettered exactly once by each consumer that refuses it, with its reason.

One sink and one worker run for the whole module; each hypothesis example is one batch of records
with fresh ids.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from agentstream.clickhouse.connect import connect
from agentstream.schemas import AvroDeserializer, AvroSchema, AvroSerializer, load_schema
from agentstream.schemas.serde import SOE_MAGIC
from agentstream.settings import Settings
from agentstream.sinks.migrations import apply_constraints, desired_constraints, migrate
from agentstream.topics.admin import ensure_topics
from agentstream.topics.catalogue import (
    DEAD_LETTER,
    HEADER_DLQ_CONSUMER,
    HEADER_DLQ_REASON,
    HEADER_DLQ_REFERENCE,
    HEADER_DLQ_SOURCE,
    REWARDS,
    ROLLOUT_EVENTS,
    ROLLOUT_STATE,
    SCHEMAS,
    SPANS,
    TRIPLETS,
)
from tests.helpers import Broker, SinkProcess, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000_000
YEAR_100000_US = 3_093_527_980_800_000_000
BIG = 1_200_000  # over the 1 MB record limit of the dead-letter topic


def _schema_without(stem: str, field_name: str) -> AvroSchema:
    definition = dict(load_schema(stem).definition)
    definition["fields"] = [f for f in definition["fields"] if f["name"] != field_name]
    return AvroSchema.from_definition(definition)


#: a producer that dropped a field with a default (resolvable) and one without (not resolvable)
REWARD_NO_FEEDBACK = _schema_without("reward", "feedback")
REWARD_NO_VALUE = _schema_without("reward", "value")


class Tail:
    """Reads a topic from the beginning, a little more at every call."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = Consumer(settings.consumer_config(f"fuzz-{uuid.uuid4().hex[:6]}"))
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.messages: list[Any] = []

    def poll(self) -> list[Any]:
        while batch := [m for m in self.consumer.consume(1000, timeout=0.2) if not m.error()]:
            self.messages.extend(batch)
        return self.messages


@dataclass
class Stack:
    settings: Settings
    sink: SinkProcess
    worker: WorkerProcess
    producer: Producer
    dead_letters: Tail
    states: Tail
    triplets: Tail
    clickhouse: Any


@pytest.fixture(scope="module")
def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = Settings(
        bootstrap_servers=broker.bootstrap_servers,
        data_dir=Path(tmp_path_factory.mktemp("fuzz")) / "data",
        topic_prefix=f"f{uuid.uuid4().hex[:10]}.",
        partitions=2,
        sink={"batch_max_seconds": 0.1, "retry_initial_seconds": 0.05, "retry_max_seconds": 0.5},
        sdk={"delivery_timeout_ms": 3000},
    )
    config = base.model_copy(
        update={
            "streams": base.streams.model_copy(
                update={
                    "session_timeout_ms": 2_000,
                    "heartbeat_interval_ms": 400,
                    "commit_interval_seconds": 0.5,
                }
            )
        }
    )
    ensure_topics(config)
    producer = Producer(config.producer_config(**{"message.max.bytes": 8_000_000}))
    for schema in (REWARD_NO_FEEDBACK, REWARD_NO_VALUE):  # where consumers find writer schemas
        producer.produce(config.topic(SCHEMAS.name), schema.json.encode(), schema.fingerprint.hex().encode())
    producer.flush(10)
    sink = SinkProcess(config).start()
    worker = WorkerProcess(config).start().wait_ready()
    try:
        yield Stack(
            config,
            sink,
            worker,
            producer,
            Tail(config, config.topic(DEAD_LETTER.name)),
            Tail(config, config.topic(ROLLOUT_STATE.name)),
            Tail(config, config.topic(TRIPLETS.name)),
            connect(config),
        )
    finally:
        worker.stop()
        sink.stop()


# ---- records ---------------------------------------------------------------------------------------
@dataclass
class Item:
    """One produced record and what each consumer must do with it."""

    kind: str
    topic: str  # catalogue name
    value: bytes
    key: bytes
    sink_lands: tuple[str, str, str] | None = None  # (table, id column, id) when the sink stores it
    worker_refuses: bool = True
    rollout: str = ""  # a good rollout's id, for the worker's outputs
    source: str = ""  # topic/partition/offset, once delivered
    extra: dict[str, Any] = field(default_factory=dict)


def encode(stem: str, datum: dict[str, Any], schema: AvroSchema | None = None) -> bytes:
    return AvroSerializer(schema or load_schema(stem))(datum)


def reward(rollout: str, reward_id: str, **overrides: Any) -> dict[str, Any]:
    datum = {
        "reward_id": reward_id, "rollout_id": rollout, "attempt_id": "", "span_id": None,
        "response_id": None, "trace_id": None, "parent_span_id": None, "sequence_id": 0,
        "name": "reward", "value": 1.0, "feedback": None, "source": "rule", "timestamp": T0 + 10,
        "attributes": {},
    }  # fmt: skip
    return datum | overrides


def span(rollout: str, span_id: str, **overrides: Any) -> dict[str, Any]:
    datum = {
        "trace_id": "t", "span_id": span_id, "parent_span_id": None, "rollout_id": rollout,
        "attempt_id": "", "sequence_id": 1, "name": "chat", "kind": "llm", "start_time": T0,
        "end_time": T0 + 5, "status": "ok", "error": None,
        "attributes": {"gen_ai.input.messages": "[]", "gen_ai.output.messages": "[]"},
        "int_attributes": {}, "float_attributes": {"temperature": 0.5}, "bool_attributes": {},
        "array_attributes": {}, "events": [], "resource_attributes": {}, "resource_name": "",
        "resource_version": "", "response_logprobs": [-0.5], "prompt_token_ids": [1],
        "response_token_ids": [2],
    }  # fmt: skip
    return datum | overrides


def event(rollout: str, event_id: str, **overrides: Any) -> dict[str, Any]:
    datum = {
        "event_id": event_id, "rollout_id": rollout, "attempt_id": "", "attempt_number": 0,
        "type": "task_enqueued", "status": "", "error": None, "worker_id": "", "timestamp": T0,
        "task": "{}", "resources": {}, "metadata": {}, "task_type": "", "mode": "", "config": None,
        "started_at": None, "llm_calls": 0, "input_tokens": 0, "output_tokens": 0,
    }  # fmt: skip
    return datum | overrides


def items_of(kind: str, n: int, noise: bytes) -> list[Item]:
    """The records of one kind (``n``: unique within the run; ``noise``: hypothesis' bytes)."""
    rid = f"r{uuid.uuid4().hex[:12]}-{n}"
    good_reward = encode("reward", reward(rid, f"{rid}-rw"))
    if kind == "good rollout":  # an enqueued rollout, one LLM call and its reward
        return [
            Item(kind, ROLLOUT_EVENTS.name, encode("rollout_event", event(rid, f"{rid}-e")), rid.encode(),
                 ("rollout_events", "event_id", f"{rid}-e"), False, rid),
            Item(kind, SPANS.name, encode("span", span(rid, f"{rid}-s")), rid.encode(),
                 ("spans", "span_id", f"{rid}-s"), False, rid),
            Item(kind, REWARDS.name, good_reward, rid.encode(), ("rewards", "reward_id", f"{rid}-rw"), False, rid),
        ]  # fmt: skip
    if kind == "evolved reward":  # written by a producer whose schema has no feedback field
        datum = {k: v for k, v in reward(rid, f"{rid}-rw").items() if k != "feedback"}
        value = encode("reward", datum, REWARD_NO_FEEDBACK)
        return [
            Item(kind, REWARDS.name, value, rid.encode(), ("rewards", "reward_id", f"{rid}-rw"), False, rid)
        ]
    topic = [SPANS.name, REWARDS.name, ROLLOUT_EVENTS.name][n % 3]
    bad: bytes
    if kind == "garbage":
        bad = noise
    elif kind == "wrong magic":
        bad = b"\xc3\x02" + good_reward[2:]
    elif kind == "unknown fingerprint":
        bad, topic = SOE_MAGIC + (noise + b"\x00" * 8)[:8] + good_reward[10:], REWARDS.name
    elif kind == "writer lacks a required field":
        datum = {k: v for k, v in reward(rid, f"{rid}-rw").items() if k != "value"}
        bad, topic = encode("reward", datum, REWARD_NO_VALUE), REWARDS.name
    elif kind == "wrong record type":
        bad = encode("span", span(rid, f"{rid}-s")) if topic != SPANS.name else good_reward
    elif kind == "non-finite reward":
        value = [math.nan, math.inf, -math.inf][n % 3]
        bad, topic = encode("reward", reward(rid, f"{rid}-rw", value=value)), REWARDS.name
    elif kind == "year 100000":
        bad = {
            SPANS.name: encode("span", span(rid, f"{rid}-s", end_time=YEAR_100000_US)),
            REWARDS.name: encode("reward", reward(rid, f"{rid}-rw", timestamp=YEAR_100000_US)),
            ROLLOUT_EVENTS.name: encode("rollout_event", event(rid, f"{rid}-e", timestamp=YEAR_100000_US)),
        }[topic]
    elif kind == "huge garbage":
        bad = (noise or b"x") * (BIG // max(len(noise), 1) + 1)
    elif kind == "huge event":  # the sink stores it; the worker's state would be over 1 MB
        big = encode("rollout_event", event(rid, f"{rid}-e", task="x" * BIG))
        return [
            Item(
                kind, ROLLOUT_EVENTS.name, big, rid.encode(), ("rollout_events", "event_id", f"{rid}-e"), True
            )
        ]
    else:
        raise AssertionError(kind)
    return [Item(kind, topic, bad, rid.encode())]


GOOD = ["good rollout", "evolved reward"]
BAD = [
    "garbage", "wrong magic", "unknown fingerprint", "writer lacks a required field", "wrong record type",
    "non-finite reward", "year 100000", "huge garbage", "huge event",
]  # fmt: skip
counter = iter(range(1_000_000))


# ---- the test --------------------------------------------------------------------------------------
# No shrinking: an example takes seconds, and a failing one names its kinds in the message anyway.
@settings(
    max_examples=6,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kinds=st.lists(
        st.tuples(st.sampled_from(GOOD + BAD), st.binary(min_size=0, max_size=64)), min_size=3, max_size=10
    )
)
@example(kinds=[(kind, b"\x01\x02") for kind in GOOD + BAD])  # every kind, whatever hypothesis draws
def test_every_record_lands_or_is_dead_lettered_once(stack: Stack, kinds: list[tuple[str, bytes]]) -> None:
    s = stack.settings
    items = [item for kind, noise in kinds for item in items_of(kind, next(counter), noise)]
    for item in items:

        def delivered(error: Any, message: Any, item: Item = item) -> None:
            assert error is None, error
            item.source = f"{message.topic()}/{message.partition()}/{message.offset()}"

        stack.producer.produce(s.topic(item.topic), item.value, item.key, on_delivery=delivered)
    stack.producer.flush(30)
    assert all(item.source for item in items)

    sink_id, worker_id = s.sink.group_id, s.streams.app_id
    expected = Counter[tuple[str, str]]()
    for item in items:
        if item.sink_lands is None:
            expected[(sink_id, item.source)] += 1
        if item.worker_refuses:
            expected[(worker_id, item.source)] += 1
    sources = {item.source for item in items}

    def dead_lettered() -> Counter[tuple[str, str]]:
        counts = Counter[tuple[str, str]]()
        for message in stack.dead_letters.poll():
            headers = dict(message.headers() or ())
            source = headers[HEADER_DLQ_SOURCE].decode()
            if source in sources:
                counts[(headers[HEADER_DLQ_CONSUMER].decode(), source)] += 1
        return counts

    landed_rows = [item.sink_lands for item in items if item.sink_lands]

    def stored() -> set[tuple[str, str, str]]:
        found = set()
        for table, column, _ in {(t, c, "") for t, c, _ in landed_rows}:
            ids = [i for t, _, i in landed_rows if t == table]
            rows = stack.clickhouse.query(
                f"SELECT {column} FROM {table} WHERE {column} IN {{ids:Array(String)}}",
                parameters={"ids": ids},
            ).result_rows
            found |= {(table, column, r[0]) for r in rows}
        return found

    rollouts = {item.rollout for item in items if item.rollout}
    with_triplets = {item.rollout for item in items if item.kind == "good rollout"}

    def worker_outputs() -> tuple[set[str], set[str]]:
        rewarded = set()
        for message in stack.states.poll():
            if message.key() and message.key().decode() in rollouts and message.value():
                if AvroDeserializer()(message.value())["reward_count"] >= 1:
                    rewarded.add(message.key().decode())
        triplets = {AvroDeserializer()(m.value())["rollout_id"] for m in stack.triplets.poll()}
        return rewarded, triplets & with_triplets

    def done() -> bool:
        rewarded, triplets = worker_outputs()
        return (
            dead_lettered() == expected
            and stored() == set(landed_rows)
            and rewarded == rollouts
            and triplets == with_triplets
        )

    finished = wait_for(done, timeout=45, interval=0.3)
    logs = f"{stack.sink.log.read_text()[-3000:]}\n{stack.worker.log.read_text()[-3000:]}"
    assert stack.sink.process.poll() is None and stack.worker.process.poll() is None, logs
    assert finished, (
        f"kinds={[k for k, _ in kinds]}\nmissing or extra dead letters: "
        f"{(expected - dead_lettered()) + (dead_lettered() - expected)}\n"
        f"not stored: {set(landed_rows) - stored()}\nworker outputs: {worker_outputs()} of {rollouts}\n{logs}"
    )
    # every dead letter says why; one too big to copy is a reference to its source
    for message in stack.dead_letters.messages:
        headers = dict(message.headers() or ())
        if headers[HEADER_DLQ_SOURCE].decode() in sources:
            assert headers[HEADER_DLQ_REASON]
            original = next(i for i in items if i.source == headers[HEADER_DLQ_SOURCE].decode())
            if len(original.value) > BIG // 2:
                assert headers.get(HEADER_DLQ_REFERENCE) == b"1"
            else:
                assert (message.value() or b"") == original.value
    # nothing the sink refused is in its tables
    refused = sorted({i.key.decode() for i in items if i.sink_lands is None})
    for table in ("spans", "rewards", "rollout_events"):
        rows = stack.clickhouse.query(
            f"SELECT rollout_id FROM {table} WHERE rollout_id IN {{ids:Array(String)}}",
            parameters={"ids": refused},
        ).result_rows
        assert not rows, (table, rows)


def test_the_rules_are_the_tables_constraints_and_stale_probes_go(clickhouse: Any) -> None:
    """Migrations apply the validation rules as constraints, replace changed or dropped ones, and
    drop the Null-engine probes made before a change (the sink re-creates them with the constraints)."""
    migrate(clickhouse)
    assert not apply_constraints(clickhouse)  # applied once, then nothing to do

    def constraints(table: str) -> set[str]:
        query = clickhouse.query(
            "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
            parameters={"t": table},
        ).result_rows[0][0]
        return {word.strip("`") for word in query.split() if word.strip("`").startswith("valid_")}

    wanted = desired_constraints()["rewards"]
    assert constraints("rewards") == set(wanted)
    clickhouse.command("CREATE TABLE rewards__probe AS rewards ENGINE = Null")
    first = sorted(wanted)[0]
    clickhouse.command(f"ALTER TABLE rewards DROP CONSTRAINT {first}")
    clickhouse.command("ALTER TABLE rewards ADD CONSTRAINT valid_old_rule CHECK 1")
    migrate(clickhouse)
    assert constraints("rewards") == set(wanted)
    assert not clickhouse.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() AND name = 'rewards__probe'"
    ).result_rows
