"""`agentstream forget` against the real pipeline: broker, stream worker, sink, chDB.

A few rollouts (two of user alice, one of bob, two of nobody, one with a dead letter) go through
the pipeline; forgetting a rollout or a user leaves no row of theirs in any table, touches no other
rollout's rows, and puts tombstones on the compacted topics keyed by rollout.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from agentstream.cli import app
from agentstream.clickhouse.connect import connect
from agentstream.producers.client import AgentStream
from agentstream.producers.tracer import Rollout
from agentstream.schemas import genai
from agentstream.settings import Settings
from agentstream.sinks.forget import DEAD_LETTERS_TABLE, USER_ID_KEY, forget, rollout_tables, tombstone_topics
from agentstream.sinks.metrics import sink_topics
from agentstream.sinks.retention import current_ttl
from agentstream.topics.admin import ensure_topics
from agentstream.topics.catalogue import SPANS, changelog_topics
from agentstream.topics.io import high_watermarks
from tests.helpers import Broker, SinkProcess, WorkerProcess, read_topic, settings_env, wait_for

pytestmark = pytest.mark.integration

#: rollout name -> the user it is recorded for, and where (a span's or a reward's attribute, or the
#: task metadata of its enqueue event)
PLAN = {
    "alice-1": ("alice", "span"),
    "alice-2": ("alice", "reward"),
    "alice-3": ("alice", "task"),
    "bob-1": ("bob", "span"),
    "anon-1": (None, None),
    "anon-2": (None, None),
}


@dataclass
class Pipeline:
    settings: Settings
    ids: dict[str, str]  # rollout name -> rollout id

    def client(self) -> Any:
        return connect(self.settings, write=True)


def _run(client: AgentStream, name: str) -> str:
    user, where = PLAN[name]
    user_attr = {USER_ID_KEY: user} if user else {}
    rollout_id = f"ro-{uuid.uuid4().hex}"
    if where == "task":
        client.emit_rollout_event(rollout_id, "task_enqueued", task={"ticket": name}, metadata=user_attr)
    with Rollout(client, {"ticket": name}, rollout_id=rollout_id, resources={"prompt": "1"}) as rollout:
        llm = rollout.span(
            "route",
            kind="llm",
            attributes={
                genai.OPERATION_NAME: "chat",
                genai.INPUT_MESSAGES: json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": name}]}]
                ),
                **(user_attr if where == "span" else {}),
            },
        )
        with llm:
            llm.set_resource("prompt", "1")
            llm.set_attribute(
                genai.OUTPUT_MESSAGES,
                json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": "ok"}],
                            "finish_reason": "stop",
                        }
                    ]
                ),
            )
        rollout.emit_reward(1.0, name="routing", attributes=user_attr if where == "reward" else None)
    return rollout.rollout_id


def _rows(client: Any, rollout_id: str) -> dict[str, int]:
    """Rows of the rollout in every table (dead letters by key), zero counts left out."""
    counts = {}
    for table in rollout_tables(client):
        n = client.query(
            f"SELECT count() FROM `{table}` WHERE rollout_id = {{r:String}}", parameters={"r": rollout_id}
        ).result_rows[0][0]
        counts[table] = int(n)
    counts[DEAD_LETTERS_TABLE] = int(
        client.query(
            "SELECT count() FROM dead_letters WHERE key = {r:String}", parameters={"r": rollout_id}
        ).result_rows[0][0]
    )
    return {t: n for t, n in counts.items() if n}


def _tombstoned(settings: Settings, topic: str, rollout_ids: set[str]) -> bool:
    messages = read_topic(settings, topic, decode=False, timeout=5, quiet=0.5)
    keys = {m.key().decode() for m in messages if m.value() is None and m.key() is not None}
    return rollout_ids <= keys


def _sink_caught_up(settings: Settings, topics: list[str] | None = None) -> bool:
    """Whether the sink's group committed every record of ``topics`` (default: all it consumes).

    The end of each partition is read from a Fetch response (ListOffsets trails it on the embedded
    broker). A partition that never held a record has no committed offset at all and counts as
    read: keys are random rollout ids, so now and then all of a topic's records hash to one partition.
    """
    group = Consumer(settings.consumer_config(settings.sink.group_id))
    reader = Consumer(
        settings.consumer_config(f"ends-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False})
    )
    try:
        for topic in topics or sink_topics(settings):
            partitions = [
                TopicPartition(topic, p)
                for p in group.list_topics(topic, timeout=10).topics[topic].partitions
            ]
            ends = high_watermarks(reader, [(tp.topic, tp.partition) for tp in partitions])
            for tp in group.committed(partitions, timeout=10):
                if ends[(tp.topic, tp.partition)] > 0 and tp.offset < ends[(tp.topic, tp.partition)]:
                    return False
        return True
    finally:
        group.close()
        reader.close()


@pytest.fixture(scope="module")
def pipeline(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers,
        data_dir=tmp_path_factory.mktemp("forget") / "data",
        topic_prefix=f"f{uuid.uuid4().hex[:10]}.",
        partitions=2,
        sink={"batch_max_seconds": 0.1, "retry_initial_seconds": 0.05, "retry_max_seconds": 0.5},
        sdk={"delivery_timeout_ms": 3000},
        retention={"triplets_days": 3650},  # the sink applies it at start (see the last test)
    )
    ensure_topics(settings)
    ensure_topics(settings, changelog_topics(settings.streams.app_id))
    sink = SinkProcess(settings).start()
    worker = WorkerProcess(settings).start().wait_ready()
    try:
        client = AgentStream(settings)
        try:
            ids = {name: _run(client, name) for name in PLAN}
            assert client.flush(30)
        finally:
            client.close()
        # a record the sink cannot decode, keyed by anon-2: a dead letter that names the rollout
        producer = Producer(settings.producer_config())
        producer.produce(settings.topic(SPANS.name), key=ids["anon-2"].encode(), value=b"\x00not avro")
        assert producer.flush(10) == 0
        reader = connect(settings)

        def landed() -> bool:
            return all(
                {"spans", "rewards", "rollout_events", "rollout_states", "triplets"}
                <= set(_rows(reader, rid))
                for rid in ids.values()
            ) and bool(_rows(reader, ids["anon-2"]).get(DEAD_LETTERS_TABLE))

        assert wait_for(landed, 120, interval=0.5), (
            f"rollouts did not land:\n{sink.log.read_text()[-2000:]}\n{worker.log.read_text()[-2000:]}"
        )
        worker.stop()
        # every table holds its rollouts' rows in full (e.g. the final state versions the worker wrote
        # last), so that the rows of rollouts a test does not forget no longer change under it
        assert wait_for(lambda: _sink_caught_up(settings), 60), sink.log.read_text()[-2000:]
        yield Pipeline(settings, ids)
    finally:
        worker.stop()
        sink.stop()


def test_forgetting_a_rollout_deletes_its_rows_everywhere_and_tombstones_it(pipeline: Pipeline) -> None:
    client = pipeline.client()
    target = pipeline.ids["anon-2"]
    others = {rid: _rows(client, rid) for name, rid in pipeline.ids.items() if name != "anon-2"}
    before = _rows(client, target)
    assert DEAD_LETTERS_TABLE in before

    report = forget(pipeline.settings, client, rollout_ids=[target])

    assert report.rollout_ids == [target]
    assert report.rows == {t: before.get(t, 0) for t in report.rows}  # counted what it deleted
    assert _rows(client, target) == {}
    assert {rid: _rows(client, rid) for rid in others} == others
    for topic in tombstone_topics(pipeline.settings):
        assert report.tombstones[topic] == 1
        assert wait_for(lambda topic=topic: _tombstoned(pipeline.settings, topic, {target}), 30), topic


def test_forgetting_a_user_forgets_exactly_their_rollouts(pipeline: Pipeline) -> None:
    client = pipeline.client()
    alice = {pipeline.ids["alice-1"], pipeline.ids["alice-2"], pipeline.ids["alice-3"]}
    others = {rid: _rows(client, rid) for rid in set(pipeline.ids.values()) - alice}
    env = settings_env(pipeline.settings)

    preview = CliRunner().invoke(app, ["forget", "--user", "alice", "--dry-run"], env=env)
    assert preview.exit_code == 0, preview.output
    assert "3 rollouts" in preview.output
    assert all(_rows(client, rid) for rid in alice)  # a dry run deletes nothing

    result = CliRunner().invoke(app, ["forget", "--user", "alice", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert "Forgot 3 rollouts" in result.output
    assert "spans" in result.output
    assert {rid: _rows(client, rid) for rid in alice} == {rid: {} for rid in alice}
    assert {rid: _rows(client, rid) for rid in others} == others
    for topic in tombstone_topics(pipeline.settings):
        assert wait_for(lambda topic=topic: _tombstoned(pipeline.settings, topic, alice), 30), topic

    # the sink skips the tombstones it reads back: no dead letter names the forgotten rollouts again
    state_topic = tombstone_topics(pipeline.settings)[0]
    assert wait_for(lambda: _sink_caught_up(pipeline.settings, [state_topic]), 30), (
        "the sink did not read the tombstones"
    )
    assert {rid: _rows(client, rid) for rid in alice} == {rid: {} for rid in alice}

    again = CliRunner().invoke(app, ["forget", "--user", "alice", "--yes"], env=env)
    assert again.exit_code == 0, again.output
    assert "nothing to forget" in again.output


def test_the_sink_applies_the_retention_setting_at_start(pipeline: Pipeline) -> None:
    client = pipeline.client()
    assert current_ttl(client, "triplets") == "toDateTime(created_at) + toIntervalDay(3650)"
    assert current_ttl(client, "spans") is None  # events: kept forever by default
