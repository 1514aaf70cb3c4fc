"""The stream worker composed without a broker: its declarations, and a harness that drives its
agents through Faust's ``test_context()`` (an in-memory channel) with the outputs recorded.

The other ``test_streams_*`` modules drive one hop each with this harness.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faust.types import Message

from agentstream.schemas import (
    AvroRecord,
    AvroSerializer,
    Reward,
    RolloutConfig,
    RolloutEvent,
    SchemaStore,
    Span,
    genai,
)
from agentstream.settings import Settings
from agentstream.streams.outputs import Headers
from agentstream.streams.records import MicrosDeserializer
from agentstream.streams.worker import StreamWorker, build_worker
from agentstream.topics.catalogue import changelog_topics

PARTITION = 3
SECOND_US = 1_000_000


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    partition: int | None


class RecordedOutputs:
    """An output sink that keeps every record sent (in place of the librdkafka producer)."""

    def __init__(self) -> None:
        self.records: list[Sent] = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        self.records.append(Sent(topic, key, value, headers, partition))

    def flush(self, timeout: float = 30.0) -> None:
        pass

    def warm(self, topics: Any, timeout: float = 10.0) -> None:
        pass

    def to(self, topic: str) -> list[Sent]:
        return [r for r in self.records if r.topic == topic]

    def decoded(self, topic: str, stem: str) -> list[dict[str, Any]]:
        """The records sent to ``topic``, decoded as ``stem`` (timestamps as microsecond ints)."""
        decode = MicrosDeserializer(stem, SchemaStore.shipped())
        return [decode(r.value) for r in self.to(topic)]


class Harness:
    """A worker on no broker: send source records to its agents, read what it sent."""

    def __init__(self, worker: StreamWorker, outputs: RecordedOutputs) -> None:
        self.worker = worker
        self.outputs = outputs
        self.settings = worker.app.agentstream
        self._agents: dict[str, Any] = {}
        self._offsets: dict[str, int] = {}

    def topic(self, name: str) -> str:
        return self.settings.topic(name)

    async def send(
        self, topic: str, record: AvroRecord | bytes, *, key: str, partition: int = PARTITION
    ) -> None:
        """Deliver one source record to the agent reading ``topic`` and wait until it is processed.

        Like ``AgentTestWrapper.put``, but the message names its topic: the joiner reads two
        topics through one channel, which the wrapper would call ``<internal>``.
        """
        agent = self._agents[self.topic(topic)]
        value = (
            record if isinstance(record, bytes) else AvroSerializer(record.avro_schema())(record.to_avro())
        )
        offset = self._offsets.get(topic, 0)
        self._offsets[topic] = offset + 1
        message = Message(
            topic=self.topic(topic),
            partition=partition,
            offset=offset,
            timestamp=time.time(),
            timestamp_type=0,
            headers=[],
            key=key.encode(),
            value=value,
            checksum=b"",
            generation_id=agent.app.consumer_generation_id,  # else the stream drops it as stale
        )
        channel = agent.stream().channel
        await channel.put(await channel.decode(message))
        # the agent takes the next event only once it is done with this one (it never awaits mid-event)
        async with agent.new_value_processed:
            await agent.new_value_processed.wait()


def run_worker(tmp_path: Path, scenario: Callable[[Harness], Awaitable[None]], **streams: Any) -> Harness:
    """Run ``scenario`` against a fresh worker whose agents read in-memory channels."""
    settings = Settings(
        bootstrap_servers="127.0.0.1:9",  # never contacted
        data_dir=tmp_path / "data",
        topic_prefix="t.",
        partitions=4,
    )
    if streams:
        settings = settings.model_copy(update={"streams": settings.streams.model_copy(update=streams)})

    async def main() -> Harness:
        outputs = RecordedOutputs()
        harness = Harness(build_worker(settings, outputs=outputs), outputs)
        app = harness.worker.app
        async with (
            app.agents["lifecycle"].test_context() as lifecycle,
            app.agents["triplet-joiner"].test_context() as joiner,
        ):
            for agent in (lifecycle, joiner):
                for name in agent.original_channel.topics:
                    harness._agents[name] = agent
            await scenario(harness)
        return harness

    return asyncio.run(main())


# ---- what builders of source records share ---------------------------------------------------------
def rollout_event(rollout_id: str, type: str, attempt: int = 0, **fields: Any) -> RolloutEvent:
    return RolloutEvent(
        event_id=fields.pop("event_id", f"{rollout_id}:{type}:{attempt}"),
        rollout_id=rollout_id,
        attempt_id=f"{rollout_id}#{attempt}" if attempt else "",
        attempt_number=attempt,
        type=type,
        timestamp=fields.pop("timestamp", int(time.time() * SECOND_US)),
        **fields,
    )


def enqueued(rollout_id: str, **config: Any) -> RolloutEvent:
    return rollout_event(rollout_id, "task_enqueued", task='{"q": 1}', config=RolloutConfig(**config))


def llm_span(rollout_id: str, span_id: str, end_us: int, attempt: int = 1, **fields: Any) -> Span:
    return Span(
        trace_id="t1",
        span_id=span_id,
        rollout_id=rollout_id,
        attempt_id=f"{rollout_id}#{attempt}",
        name="chat",
        kind=fields.pop("kind", "llm"),
        start_time=end_us - 1000,
        end_time=end_us,
        attributes={
            genai.INPUT_MESSAGES: '[{"role": "user"}]',
            genai.OUTPUT_MESSAGES: '[{"role": "assistant"}]',
            genai.REQUEST_MODEL: "m",
        },
        prompt_token_ids=[1, 2, 3],
        response_token_ids=[4, 5],
        response_logprobs=[-0.5, -0.25],
        resource_name="prompt",
        resource_version="v1",
        **fields,
    )


def reward(rollout_id: str, reward_id: str, value: float, at_us: int, attempt: int = 1) -> Reward:
    return Reward(
        reward_id=reward_id,
        rollout_id=rollout_id,
        attempt_id=f"{rollout_id}#{attempt}",
        value=value,
        timestamp=at_us,
    )


# ---- the worker's declarations ----------------------------------------------------------------------
def test_each_source_topic_has_exactly_one_consuming_agent(tmp_path: Path) -> None:
    worker = build_worker(
        Settings(bootstrap_servers="127.0.0.1:9", data_dir=tmp_path, topic_prefix="t."),
        outputs=RecordedOutputs(),
    )
    readers: dict[str, list[str]] = {}
    for name, agent in worker.app.agents.items():
        for topic in agent.channel.topics:
            readers.setdefault(topic, []).append(name)
    # rewards are read by the joiner only (which also counts them on the rollout's state)
    assert readers == {
        "t.rollout-events": ["lifecycle"],
        "t.spans": ["triplet-joiner"],
        "t.rewards": ["triplet-joiner"],
    }


def test_tables_and_their_changelogs(tmp_path: Path) -> None:
    settings = Settings(bootstrap_servers="127.0.0.1:9", data_dir=tmp_path, topic_prefix="t.", partitions=6)
    worker = build_worker(settings, outputs=RecordedOutputs())
    changelogs = {name: table.changelog_topic.get_topic_name() for name, table in worker.app.tables.items()}
    internal = {spec.name for spec in changelog_topics(settings.topic(settings.streams.app_id))}
    assert changelogs.pop("rollouts") == "t.rollout-state"
    assert set(changelogs.values()) == internal  # created before the worker starts (see service.py)
    assert {table.partitions for table in worker.app.tables.values()} == {6}
