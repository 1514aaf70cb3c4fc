"""Dead letters end to end: refused by the real sink, shown on the dashboard and by `dead-letters list`,
re-driven by `dead-letters replay` once the cause is fixed, landing in ClickHouse exactly once."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from pydantic import SecretStr
from starlette.testclient import TestClient
from typer.testing import CliRunner

from agentstream.analytics.dashboard import create_app
from agentstream.analytics.dead_letters import DeadLetterFilter, DeadLetterQueries
from agentstream.cli import app
from agentstream.cli.context import console
from agentstream.clickhouse.connect import connect
from agentstream.producers.dead_letter_replay import DeadLetter, Replayer
from agentstream.schemas import AvroSchema, AvroSerializer, Reward
from agentstream.settings import Settings
from agentstream.topics import dead_letter as dead_letters
from agentstream.topics.catalogue import HEADER_DLQ_REPLAY_OF, HEADER_EVENT_ID
from agentstream.topics.io import high_watermarks
from tests.helpers import SinkProcess, wait_for

pytestmark = pytest.mark.integration

TOKEN = "dead-letter-page-token"
RESOLVER_INTERVAL = 5.0  # SchemaTopicResolver's min_interval: the sink re-reads the schemas topic no sooner


def _evolved_reward_schema() -> AvroSchema:
    """Reward with one more field: a writer schema the sink does not know until it is published."""
    definition = json.loads(Reward.avro_schema().json)
    definition["fields"].append({"name": "reviewer_note", "type": "string", "default": ""})
    return AvroSchema.from_definition(definition)


def _cli(settings: Settings, *args: str, input: str | None = None) -> Any:
    result = CliRunner().invoke(app, ["dead-letters", *args], env=settings.to_env(), input=input)
    return result


def _count(client: Any, sql: str, **parameters: Any) -> int:
    return int(client.query(sql, parameters=parameters).result_rows[0][0])


def _ends(settings: Settings, topic: str) -> dict[tuple[str, int], int]:
    consumer = Consumer(settings.consumer_config("dead-letter-test-ends"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return high_watermarks(consumer, [(topic, p) for p in partitions])
    finally:
        consumer.close()


def test_dead_letters_are_shown_replayed_once_and_land(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "width", 400)  # the tables' cells unwrapped, to find their text
    rewards, dead_letter = settings.topic("rewards"), settings.topic("dead-letter")
    evolved = _evolved_reward_schema()
    sink = SinkProcess(settings).start()
    producer = Producer(settings.producer_config())
    try:
        # a reward of a writer schema nobody published (a producer upgraded before its schema went out),
        # and a good one that lands
        fixed = Reward(
            reward_id="rw-fixed", rollout_id="ro-fixed", value=0.5, timestamp=1_700_000_000_000_000
        )
        fixed_value = AvroSerializer(evolved)({**fixed.to_avro(), "reviewer_note": "ok"})
        good = Reward(reward_id="rw-good", rollout_id="ro-good", value=1.0, timestamp=1_700_000_000_000_001)
        good_value = AvroSerializer(Reward.avro_schema())(good.to_avro())
        producer.produce(
            rewards, fixed_value, b"ro-fixed", headers=[(HEADER_EVENT_ID, b"rw-fixed"), ("trace", b"t-1")]
        )
        producer.produce(rewards, good_value, b"ro-good", headers=[(HEADER_EVENT_ID, b"rw-good")])
        producer.flush(10)
        ch = connect(settings)
        assert wait_for(lambda: _count(ch, "SELECT count() FROM rewards WHERE reward_id = 'rw-good'"), 30)
        (good_partition, good_offset), = ch.query(
            "SELECT _partition, _offset FROM rewards WHERE reward_id = 'rw-good'"
        ).result_rows  # fmt: skip

        # two references, as a worker sends them for records too big to copy (topics/dead_letter.py):
        # one to the good reward (stored by the sink already), one to a record the topic no longer has
        def reference(partition: int, offset: int, value: bytes) -> None:
            letter = dead_letters.build(
                source=dead_letters.Source(rewards, partition, offset),
                key=b"ro-good",
                value=value,
                headers=[(HEADER_EVENT_ID, b"rw-good")],
                reason="the rollout's state is over 1 MB",
                error_class="StateTooLarge",
                consumer="agentstream-worker",
                limit=64,  # too big to copy
            )
            assert letter.reference
            producer.produce(dead_letter, letter.value, letter.key, headers=letter.headers)

        reference(good_partition, good_offset, good_value)
        reference(good_partition, 100_000, b"gone")
        producer.flush(10)
        assert wait_for(lambda: _count(ch, "SELECT count() FROM dead_letters") == 3, 30), sink.status()

        # ---- shown: the API, the page and `list`
        queries = DeadLetterQueries(ch)
        unknown = queries.records(DeadLetterFilter(error_class="UnknownSchemaError"))
        assert unknown["total"] == 1
        row = unknown["rows"][0]
        assert row["source_topic"] == rewards and row["consumer"] == settings.sink.group_id
        assert row["key"] == "ro-fixed" and row["size"] == len(fixed_value) and not row["reference"]
        assert (
            "unknown writer schema" in row["reason"] and row["replayed_at"] is None and row["repeat_of"] == ""
        )
        references = queries.records(DeadLetterFilter(consumer="agentstream-worker"))["rows"]
        assert {r["size"] for r in references} == {len(good_value), 4} and all(
            r["reference"] for r in references
        )
        page_settings = settings.model_copy(
            update={"dashboard": settings.dashboard.model_copy(update={"token": SecretStr(TOKEN)})}
        )
        with TestClient(create_app(page_settings), headers={"Authorization": f"Bearer {TOKEN}"}) as web:
            api = web.get("/api/dead-letters", params={"source_topic": rewards}).json()
            assert api["total"] == 3
            counts = {(c["consumer"], c["error_class"]): c["dead_letters"] for c in api["counts"]}
            assert counts == {
                (settings.sink.group_id, "UnknownSchemaError"): 1,
                ("agentstream-worker", "StateTooLarge"): 2,
            }
            assert sum(t["total"] for t in api["timeline"]["rows"]) == 3
            page = web.get("/dead-letters", params={"error_class": "StateTooLarge"})
            assert page.status_code == 200 and page.text.count("<tr data-id=") == 2
            assert "reference" in page.text and "the rollout&#39;s state is over 1 MB" in page.text
            assert web.get("/api/dead-letters", params={"consumer": "x' OR '1'='1"}).status_code == 400
        listed = _cli(settings, "list", "--json", "--source-topic", "rewards")  # a catalogue name works too
        assert listed.exit_code == 0, listed.output
        assert {r["error_class"] for r in json.loads(listed.output)["rows"]} == {
            "UnknownSchemaError",
            "StateTooLarge",
        }

        # ---- replayed before the fix: it fails again, and its new dead letter says it is a repeat
        first = _cli(settings, "replay", "--error-class", "UnknownSchemaError", "--yes")
        assert first.exit_code == 0 and "1 sent" in first.output, first.output
        assert wait_for(lambda: _count(ch, "SELECT count() FROM dead_letters") == 4, 30), sink.status()
        repeat = queries.records(DeadLetterFilter(error_class="UnknownSchemaError", replayed=False))["rows"]
        assert len(repeat) == 1 and repeat[0]["repeat_of"] == f"{dead_letter}/{row['id']}"
        repeated_at = time.monotonic()

        # ---- the fix: the writer schema is published; once the sink may look again, replay everything
        producer.produce(settings.topic("schemas"), evolved.json.encode(), evolved.fingerprint.hex().encode())
        producer.flush(10)
        time.sleep(max(0.0, repeated_at + RESOLVER_INTERVAL + 1 - time.monotonic()))
        second = _cli(settings, "replay", "--source-topic", rewards, "--yes")
        assert second.exit_code == 0, second.output
        assert "1 matching dead letter(s) were replayed before" in second.output
        assert (
            "2 sent" in second.output and "1 skipped" in second.output and "gone from Kafka" in second.output
        )
        assert wait_for(lambda: _count(ch, "SELECT count() FROM rewards WHERE reward_id = 'rw-fixed'"), 30), (
            sink.status()
        )
        # the good reward a worker refused was stored already: its re-drive is not stored twice
        assert wait_for(lambda: (sink.status() or {}).get("replay_duplicates_dropped", 0) >= 1, 30)
        assert _count(ch, "SELECT count() FROM rewards WHERE reward_id = 'rw-good'") == 1
        assert _count(ch, "SELECT count() FROM rewards WHERE reward_id = 'rw-fixed'") == 1
        assert _count(ch, "SELECT count() FROM dead_letters") == 4  # nothing failed again

        # ---- once each: a third run sends nothing
        before = _ends(settings, rewards)
        third = _cli(settings, "replay", "--yes")
        assert third.exit_code == 0, third.output
        assert "sent" not in third.output and "3 matching dead letter(s) were replayed before" in third.output
        assert _ends(settings, rewards) == before
        # the replayer itself refuses what was replayed, whatever it is handed
        replayed_before = queries.dead_letters(DeadLetterFilter(replayed=True))
        again = Replayer(settings, ch).replay([DeadLetter(**row) for row in replayed_before])
        assert [o.status for o in again] == ["already replayed"] * 3
        assert _ends(settings, rewards) == before
        replayed = queries.records(DeadLetterFilter(replayed=True))
        assert replayed["total"] == 3 and all(
            r["replayed_to"].startswith(f"{rewards}/") for r in replayed["rows"]
        )
        assert {r["key"] for r in replayed["rows"]} == {"ro-fixed", "ro-good"}
        headers = dict(
            ch.query(
                "SELECT headers FROM dead_letters WHERE headers[{h:String}] != ''",
                parameters={"h": HEADER_DLQ_REPLAY_OF},
            ).result_rows[0][0]
        )
        assert headers["trace"] == "t-1" and headers[HEADER_EVENT_ID] == "rw-fixed"  # the original's headers
    finally:
        sink.stop()
