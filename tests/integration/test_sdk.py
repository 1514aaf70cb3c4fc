"""The agent-side SDK against the real embedded broker."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import agentstream
from agentstream.clickhouse.connect import connect
from agentstream.process.ports import free_port
from agentstream.producers.client import AgentStream
from agentstream.producers.spool import Spool, SpooledRecord
from agentstream.schemas import Span
from agentstream.settings import Settings
from agentstream.topics.admin import ensure_topics
from tests.helpers import SinkProcess, own_broker, read_topic, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def client(settings: Settings):
    sdk = agentstream.init(settings, service_name="sdk-test")
    yield sdk
    agentstream.shutdown()


def _spans(settings: Settings, n: int) -> dict[str, Span]:
    records = read_topic(settings, settings.topic("spans"), expected=n)
    spans = [Span.from_avro(r) for r in records]
    assert len(spans) == n
    return {s.name: s for s in spans}


def test_spans_nest_within_a_rollout(settings: Settings, client: AgentStream) -> None:
    @agentstream.traced(kind="tool")
    def lookup(order: str) -> str:
        return order.upper()

    with agentstream.rollout({"ticket": "x"}) as rollout:
        with agentstream.span("plan", kind="agent") as plan:
            plan.set_attribute("gen_ai.usage.input_tokens", 7)
            lookup("a1")
        agentstream.emit_message("thinking out loud")
    assert client.flush(10)
    spans = _spans(settings, 4)
    root, plan_span, tool, message = (
        spans["rollout"],
        spans["plan"],
        spans["execute_tool lookup"],
        spans["message"],
    )
    assert root.parent_span_id is None and root.kind == "agent"
    assert plan_span.parent_span_id == root.span_id and tool.parent_span_id == plan_span.span_id
    assert message.parent_span_id == root.span_id
    assert {s.trace_id for s in spans.values()} == {rollout.trace_id}
    assert {s.rollout_id for s in spans.values()} == {rollout.rollout_id}
    # sequence ids follow emission order within the rollout
    assert sorted(s.sequence_id for s in spans.values()) == [1, 2, 3, 4]
    assert tool.sequence_id < plan_span.sequence_id < root.sequence_id
    assert plan_span.attributes["gen_ai.usage.input_tokens"] == 7
    assert root.resource_attributes["service.name"] == "sdk-test"
    events = read_topic(settings, settings.topic("rollout-events"), expected=2)
    assert [(e["type"], e["status"]) for e in sorted(events, key=lambda e: e["timestamp"])] == [
        ("attempt_started", "running"),
        ("attempt_finished", "succeeded"),
    ]


def test_asyncio_tasks_and_threads_keep_their_own_context(settings: Settings, client: AgentStream) -> None:
    @agentstream.traced(name="fetch", kind="tool")
    async def fetch(i: int) -> int:
        await asyncio.sleep(0.01)
        return i

    async def agent() -> None:
        with agentstream.rollout("async"):
            with agentstream.span("gather"):
                await asyncio.gather(*(fetch(i) for i in range(3)))
                await asyncio.to_thread(agentstream.emit_message, "from a worker thread")

    asyncio.run(agent())

    def threaded() -> None:
        with agentstream.rollout("threads"):
            with agentstream.span("fan-out"):
                with ThreadPoolExecutor(2) as pool:
                    list(
                        pool.map(
                            agentstream.bind_context(lambda i: agentstream.emit_message(f"m{i}")), range(2)
                        )
                    )

    threaded()
    assert client.flush(10)
    records = [Span.from_avro(r) for r in read_topic(settings, settings.topic("spans"), expected=10)]
    assert len(records) == 10
    by_id = {s.span_id: s for s in records}
    gather = next(s for s in records if s.name == "gather")
    fetches = [s for s in records if s.name == "execute_tool fetch"]
    assert len(fetches) == 3 and all(f.parent_span_id == gather.span_id for f in fetches)
    messages = [s for s in records if s.name == "message"]
    assert len(messages) == 3
    async_msg = next(
        m for m in messages if m.attributes["agentstream.message.body"] == "from a worker thread"
    )
    assert async_msg.parent_span_id == gather.span_id
    fan_out = next(s for s in records if s.name == "fan-out")
    for m in messages:
        if m is not async_msg:
            assert m.parent_span_id == fan_out.span_id and m.rollout_id == fan_out.rollout_id
    assert all(by_id.get(s.parent_span_id) is not None for s in records if s.parent_span_id)


def test_errors_mark_spans_and_rollouts_failed(settings: Settings, client: AgentStream) -> None:
    with pytest.raises(ZeroDivisionError):
        with agentstream.rollout("boom"):
            with agentstream.span("divide", kind="tool"):
                1 / 0  # noqa: B018
    assert client.flush(10)
    spans = _spans(settings, 2)
    divide = spans["divide"]
    assert divide.status == "error" and "ZeroDivisionError" in (divide.error or "")
    (event,) = divide.events
    assert event.name == "exception" and event.attributes["exception.type"] == "ZeroDivisionError"
    assert spans["rollout"].status == "error"
    finished = [
        e
        for e in read_topic(settings, settings.topic("rollout-events"), expected=2)
        if e["type"] == "attempt_finished"
    ]
    assert finished[0]["status"] == "failed" and "ZeroDivisionError" in finished[0]["error"]


def test_rewards_inside_and_outside_a_rollout(settings: Settings, client: AgentStream) -> None:
    with agentstream.rollout("task") as rollout:
        with agentstream.span("answer", kind="llm") as answer:
            inner = agentstream.emit_reward(0.5, name="format", feedback="missing field")
    later = agentstream.emit_reward(
        1, name="resolution", source="business_event", rollout_id=rollout.rollout_id
    )
    with pytest.raises(ValueError, match="finite number"):
        agentstream.emit_reward(float("inf"))
    with pytest.raises(ValueError, match="no rollout"):
        agentstream.emit_reward(1.0)
    with pytest.raises(ValueError, match="unknown source"):
        agentstream.emit_reward(1.0, rollout_id="ro-x", source="vibes")
    assert client.flush(10)
    rewards = {r["reward_id"]: r for r in read_topic(settings, settings.topic("rewards"), expected=2)}
    assert (
        rewards[inner]["parent_span_id"] == answer.span_id
        and rewards[inner]["attempt_id"] == rollout.attempt_id
    )
    assert rewards[inner]["feedback"] == "missing field" and rewards[inner]["sequence_id"] > 0
    assert rewards[later]["source"] == "business_event" and rewards[later]["attempt_id"] == ""
    assert rewards[later]["rollout_id"] == rollout.rollout_id and rewards[later]["value"] == 1.0


def test_oversized_payloads_are_truncated_with_a_marker(settings: Settings) -> None:
    small = settings.model_copy(update={"sdk": settings.sdk.model_copy(update={"max_record_bytes": 64_000})})
    client = AgentStream(small)
    try:
        with client.rollout("big"):
            with client.span("huge", kind="llm") as span:
                span.set_attribute("gen_ai.input.messages", "x" * 300_000)
                span.set_token_ids(list(range(30_000)), [1, 2, 3])
        assert client.flush(10)
    finally:
        client.close()
    huge = _spans(settings, 2)["huge"]
    assert huge.attributes["agentstream.truncated"] is True
    assert "gen_ai.input.messages" in huge.attributes["agentstream.truncated_keys"]
    assert str(huge.attributes["gen_ai.input.messages"]).endswith("chars]")
    assert len(str(huge.attributes["gen_ai.input.messages"])) < 64_000
    assert huge.response_token_ids == [1, 2, 3]


def test_unreachable_broker_spools_and_replays_in_order(broker_kind: str, tmp_path: Path) -> None:
    """Emitting with no broker neither blocks nor loses: records wait in the spool until it comes."""
    port = free_port()
    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{port}", data_dir=tmp_path / "data", topic_prefix="spool.", partitions=2
    )
    client = AgentStream(settings)
    try:
        started = time.monotonic()
        with client.rollout("offline") as rollout:
            for i in range(300):
                with client.span(f"step-{i:03d}"):
                    pass
        # An emit that waited for the broker would wait a whole delivery timeout (10 s) at least once;
        # how long one emit takes is a figure of benchmarks/ingest.py, not an assertion here.
        assert time.monotonic() - started < settings.sdk.delivery_timeout_ms / 1000
        time.sleep(1.5)
        assert client.stats.spooled >= 300 and not client.flush(0.2)
        assert any(settings.spool_dir.rglob("*.seg"))
        with own_broker(broker_kind, tmp_path / "broker", port):
            ensure_topics(settings)
            assert client.flush(30), client.stats
            spans = [Span.from_avro(r) for r in read_topic(settings, "spool.spans", expected=301)]
            client.close()
    finally:
        client.close()
    steps = [s for s in spans if s.name.startswith("step-")]
    assert len({s.span_id for s in spans}) == 301
    assert [s.name for s in sorted(steps, key=lambda s: s.sequence_id)] == [
        f"step-{i:03d}" for i in range(300)
    ]
    assert all(s.rollout_id == rollout.rollout_id for s in spans)
    assert not any(settings.spool_dir.rglob("*.seg"))


def test_a_spool_left_by_a_dead_process_is_delivered_by_the_next(settings: Settings, tmp_path: Path) -> None:
    dead = Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        data_dir=settings.data_dir,
        topic_prefix=settings.topic_prefix,
    )
    first = AgentStream(dead)
    with first.rollout("left behind"):
        with first.span("orphaned"):
            pass
    first.close(timeout=0.5)  # broker unreachable: records stay in the spool
    assert any(settings.spool_dir.rglob("*.seg"))
    second = AgentStream(settings)
    try:
        assert second.flush(20)
    finally:
        second.close()
    names = {r["name"] for r in read_topic(settings, settings.topic("spans"), expected=2)}
    assert names == {"orphaned", "rollout"}


def test_emit_never_blocks_while_the_queue_overflows(settings: Settings) -> None:
    tiny = settings.model_copy(update={"sdk": settings.sdk.model_copy(update={"queue_size": 10})})
    client = AgentStream(tiny)
    try:
        with client.rollout("flood"):
            for _ in range(2_000):
                with client.span("s"):
                    pass
        assert client.flush(30)
    finally:
        client.close()
    assert len(read_topic(settings, settings.topic("spans"), expected=2_001)) == 2_001


def test_oversized_records_are_data_errors_not_outages(settings: Settings, client: AgentStream) -> None:
    """5 MB of reward feedback is truncated to fit, a 5 MB task is dead-lettered with the broker's
    reason, and neither is taken for an outage: the records after them are delivered, nothing is
    spooled."""
    huge = "x" * 5_000_000
    with agentstream.rollout({"ticket": "big"}) as rollout:
        reward_id = agentstream.emit_reward(1.0, feedback=huge, attributes={"note": huge})
    client.enqueue({"blob": huge})  # a task event cannot be cut: it goes to the dead-letter topic
    with agentstream.rollout({"ticket": "after"}):
        agentstream.emit_reward(0.5, feedback="fine")
    assert client.flush(20)
    stats = client.stats
    assert stats.outages == 0 and stats.spooled == 0 and stats.dead_lettered == 1
    rewards = {r["reward_id"]: r for r in read_topic(settings, settings.topic("rewards"), expected=2)}
    assert len(rewards) == 2
    big = rewards[reward_id]
    assert big["rollout_id"] == rollout.rollout_id and big["value"] == 1.0
    assert big["feedback"].startswith("x" * 256) and "…[truncated " in big["feedback"]
    assert big["attributes"]["agentstream.truncated"] == "true"
    assert big["attributes"]["agentstream.truncated_keys"] == "feedback,note"
    dead = read_topic(settings, settings.topic("dead-letter"), expected=1, decode=False)
    assert len(dead) == 1
    headers = dict(dead[0].headers())
    assert b"MSG_SIZE_TOO_LARGE" in headers["agentstream-dlq-reason"]
    assert headers["agentstream-dlq-source"] == settings.topic("rollout-events").encode()


def test_an_outage_stays_within_the_spool_bound_and_delivery_resumes(
    broker_kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With Kafka unreachable and a small spool bound, the spool stops growing at the bound: the
    oldest records are kept, the newest dropped, counted and warned about once; when Kafka is back,
    what was kept is delivered, in order, and so is everything emitted afterwards."""
    port = free_port()
    bound = 150_000
    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{port}",
        data_dir=tmp_path / "data",
        topic_prefix="bound.",
        partitions=1,
        sdk={"spool_max_bytes": bound},
    )
    client = AgentStream(settings)
    try:
        with client.rollout("offline"):
            for i in range(2_000):
                with client.span(f"step-{i:04d}") as span:
                    span.set_attribute("note", "n" * 200)
        stats = client.stats
        assert wait_for(lambda: stats.spooled + stats.spool_dropped == stats.submitted, 30), stats
        assert 0 < stats.spooled < stats.submitted and stats.spool_dropped > 0
        on_disk = sum(f.stat().st_size for f in settings.spool_dir.rglob("*.seg"))
        assert on_disk <= bound and stats.spool_bytes <= bound
        full = [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(full) == 1, [r.getMessage() for r in full]
        kept_spans = stats.spooled - 1  # the attempt_started event went first
        with own_broker(broker_kind, tmp_path / "broker", port):
            ensure_topics(settings)
            assert wait_for(lambda: client.stats.connected, 30)  # until then, the spool is still full
            with client.span("after the outage"):
                pass
            assert client.flush(30), client.stats
            spans = [Span.from_avro(r) for r in read_topic(settings, "bound.spans", expected=kept_spans + 1)]
            client.close()
    finally:
        client.close()
    assert [s.name for s in spans] == [f"step-{i:04d}" for i in range(kept_spans)] + ["after the outage"]
    assert any(f"{stats.spool_dropped} records were dropped" in r.getMessage() for r in caplog.records)
    assert not any(settings.spool_dir.rglob("*.seg"))


def test_a_poisoned_spool_is_set_aside_and_the_rest_delivered(settings: Settings) -> None:
    """Adopted spools holding a 5 MB record, a record for a topic that does not exist and an
    unreadable segment: the first two are dead-lettered, the segment is quarantined, the good
    records are delivered, Kafka is never taken for down, and the next process adopts nothing."""
    root = settings.spool_dir
    dead = settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    first = AgentStream(dead)
    with first.rollout("left behind"):
        with first.span("orphaned"):
            pass
    first.close(timeout=0.5)  # broker unreachable: the records stay in its spool
    poison = Spool.create(root, "poison")
    poison.append(SpooledRecord(settings.topic("rewards"), b"ro-1", b"x" * 5_000_000))
    poison.append(SpooledRecord("no-such-topic", b"ro-1", b"lost"))
    poison.seal()
    poison.close(remove_if_empty=False)
    corrupt = Spool.create(root, "corrupt")
    corrupt.append(SpooledRecord(settings.topic("spans"), b"ro-1", b"never read"))
    (segment,) = corrupt.seal()
    segment.write_bytes(b"\x07" + segment.read_bytes()[1:])  # a frame of an unknown format
    corrupt.close(remove_if_empty=False)

    second = AgentStream(settings)
    try:
        assert second.flush(30), second.stats
        with second.rollout("after"):
            pass
        assert second.flush(10)
        stats = second.stats
    finally:
        second.close()
    assert stats.outages == 0 and stats.dead_lettered == 2 and stats.quarantined == 1
    names = {r["name"] for r in read_topic(settings, settings.topic("spans"), expected=3)}
    assert names == {"orphaned", "rollout"}
    dead_letters = read_topic(settings, settings.topic("dead-letter"), expected=2, decode=False)
    reasons = sorted(dict(m.headers())["agentstream-dlq-reason"].decode() for m in dead_letters)
    assert len(reasons) == 2
    assert reasons[0].startswith("MSG_SIZE_TOO_LARGE") and reasons[1] == "topic no-such-topic does not exist"
    (quarantined,) = (root / "quarantine").iterdir()
    assert quarantined.name.startswith("corrupt-")
    assert sorted(p.name for p in root.iterdir()) == ["quarantine"]
    third = AgentStream(settings)
    try:
        assert third.flush(10)
    finally:
        third.close()
    assert third.stats.replayed == 0 and third.stats.quarantined == 0


def test_pii_in_a_prompt_lands_in_clickhouse_redacted_with_its_count(settings: Settings) -> None:
    sink = SinkProcess(settings).start()
    client = AgentStream(settings)
    try:
        prompt = [
            {
                "role": "user",
                "parts": [{"type": "text", "content": "I am bob@example.com,\ncall 555-123-4567"}],
            }
        ]
        with client.rollout("pii") as rollout:
            with client.span("chat", kind="llm") as span:
                span.set_attribute("gen_ai.input.messages", json.dumps(prompt))
            client.emit_reward(0.0, feedback="charged twice on 4111 1111 1111 1111")
        assert client.flush(20)
        assert client.stats.redacted == {"email": 1, "phone": 1, "card": 1}
        ch = connect(settings)

        def landed() -> list[Any]:
            return ch.query(
                "SELECT attributes['gen_ai.input.messages'], int_attributes['agentstream.redacted.email'], "
                "int_attributes['agentstream.redacted.phone'] FROM spans WHERE rollout_id = {r:String} "
                "AND name = 'chat'",
                parameters={"r": rollout.rollout_id},
            ).result_rows

        rows = wait_for(landed, 60)
        assert rows, sink.log.read_text()[-2000:]
        content, emails, phones = rows[0]
        assert json.loads(content)[0]["parts"][0]["content"] == "I am <EMAIL>,\ncall <PHONE>"
        assert (emails, phones) == (1, 1)
        reward = wait_for(
            lambda: (
                ch.query(
                    "SELECT feedback, attributes['agentstream.redacted.card'] FROM rewards WHERE rollout_id = {r:String}",
                    parameters={"r": rollout.rollout_id},
                ).result_rows
            ),
            60,
        )
        assert reward == [("charged twice on <CARD>", "1")]
    finally:
        client.close()
        sink.stop()
