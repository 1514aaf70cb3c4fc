"""The Faust application of the stream workers, made safe on the embedded broker (and any other).

What the kill tests showed, and what this package does about it:

* **Lost changelog updates / a crash at restart.** Table recovery reads each changelog partition up
  to a "highwater" that Faust takes from ListOffsets; Tansu answers the newest *batch's base
  offset* + 1, so recovery stopped short of the last records, or Faust refused to start
  ("persisted offset greater than highwater"). :meth:`TansuSafeConsumerThread._highwaters` takes
  the end offset from a Fetch response instead, which is correct on every broker.
* **Outputs and state lost around a rebalance.** An ``await`` inside an agent lets a rebalance run
  while an event is half processed; no hop awaits mid-event (each handles an event in a plain
  method, see ``streams/joiner_agent.py``). A worker may also die after saving state and before its
  outputs are acknowledged: redelivered events re-send the outputs the state says were emitted.
* **Outputs vs. offsets.** Output records go through librdkafka (:class:`~.outputs.OutputProducer`), flushed
  together with Faust's changelog producer before any source offset is committed.

Defences kept because the failure is possible even though the kill tests did not catch it:

* Faust's commit can jump over an unacked message at the committed offset (an off-by-one in its
  "gap at the head" test, see ``_new_offset``); we refuse such a commit.
* Faust treats any jump in source offsets as a compaction gap and moves on. The broker can expose
  a later batch before an earlier one under concurrent produce (this lost data in the ClickHouse
  sink), so :class:`GapGuard` seeks back over a jump and re-reads, accepting a gap only when it is
  still there after ``gap_verify_seconds``.

Plus the settings Tansu needs: the fetch wait (Faust hard-codes aiokafka's 1500 ms, the live
latency floor on a broker whose fetch is a sleep-poll loop; we use 50 ms), no transactions and no
idempotent aiokafka producer (the broker rejects InitProducerId v0), short sessions (joins are held
for half of the session timeout), ``producer_linger`` so the broker is not flooded with tiny
batches, and a per-app data directory.

On Apache Kafka none of these defences acts (docs/architecture.md, "On Apache Kafka: the Tansu
workarounds"); they stay because they cost little there.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import faust.auth
from confluent_kafka import Consumer as KafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from agentstream.settings import Settings
from agentstream.topics.io import high_watermarks

from .outputs import OutputProducer, OutputSink

logger = logging.getLogger(__name__)


# ---- contiguity ------------------------------------------------------------------------------------
@dataclass
class _Position:
    expected: int | None = None
    gap_since: float | None = None
    gaps_accepted: int = 0


@dataclass
class GapGuard:
    """Keeps the offsets handed to Faust contiguous per guarded partition.

    ``expected`` is the next offset Faust should see; it is learned from seeks (committed offsets
    after an assignment) and advanced by every accepted record.
    """

    verify_seconds: float
    guarded_topics: set[str] = field(default_factory=set)
    positions: dict[TP, _Position] = field(default_factory=dict)
    rereads: int = 0
    duplicates_dropped: int = 0
    #: gaps handed on after ``verify_seconds`` (compacted or deleted records; never on a plain log)
    gaps_accepted: int = 0
    #: commits refused by :meth:`TansuSafeConsumer._new_offset` (counted here with the other
    #: workaround counters, which the worker's status file reports)
    commits_refused: int = 0

    def seek(self, tp: TP, offset: int | None) -> None:
        self.positions[tp] = _Position(expected=offset if offset is not None and offset >= 0 else None)

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self.positions.pop(tp, None)

    def filter(self, tp: TP, records: list[Any], now: float) -> tuple[list[Any], int | None]:
        """The records to hand on, and the offset to seek back to (``None``: no seek)."""
        if tp.topic not in self.guarded_topics or not records:
            return records, None
        pos = self.positions.setdefault(tp, _Position())
        accepted: list[Any] = []
        for record in records:
            offset = record.offset
            if pos.expected is None or offset == pos.expected:
                accepted.append(record)
                pos.expected = offset + 1
                pos.gap_since = None
            elif offset < pos.expected:
                self.duplicates_dropped += 1  # re-read after a seek back: already handed on
                continue
            else:
                if pos.gap_since is None:
                    pos.gap_since = now
                if now - pos.gap_since < self.verify_seconds:
                    self.rereads += 1
                    return accepted, pos.expected
                logger.warning(
                    "accepting offset gap %s..%s on %s[%s] after %.1fs (compacted or deleted records)",
                    pos.expected,
                    offset - 1,
                    tp.topic,
                    tp.partition,
                    now - pos.gap_since,
                )
                pos.gaps_accepted += 1
                self.gaps_accepted += 1
                pos.gap_since = None
                accepted.append(record)
                pos.expected = offset + 1
        return accepted, None


# ---- the end offsets of a partition, from a Fetch response -----------------------------------------
def fetch_end_offsets(
    consumer_config: Mapping[str, Any], tps: Iterable[TP], timeout: float = 10.0
) -> dict[TP, int]:
    """End offset (high watermark) of each partition as reported by a Fetch response."""
    tps = list(tps)
    if not tps:
        return {}
    config = {
        **consumer_config,
        "group.id": f"agentstream-hwm-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    }
    consumer = KafkaConsumer(config)
    try:
        ends = high_watermarks(consumer, [(tp.topic, tp.partition) for tp in tps], timeout)
    finally:
        consumer.close()
    return {tp: ends[(tp.topic, tp.partition)] for tp in tps}


# ---- Faust driver classes --------------------------------------------------------------------------
class TansuSafeConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka passes this to its Fetcher when the consumer starts.
        consumer._fetch_max_wait_ms = cast(StreamApp, self.app).agentstream.streams.fetch_wait_ms
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        config = cast(StreamApp, self.app).agentstream.consumer_config("unused")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, fetch_end_offsets, config, list(partitions))


class TansuSafeConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> TansuSafeConsumerThread:
        return TansuSafeConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def gap_guard(self) -> GapGuard:
        return cast(StreamApp, self.app).gap_guard

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        records = await super()._getmany(active_partitions, timeout)
        if not records:
            return records
        guard = self.gap_guard
        now = time.monotonic()
        filtered = {}
        for tp, batch in records.items():
            accepted, seek_to = guard.filter(tp, batch, now)
            if seek_to is not None:
                self._thread.seek(tp, seek_to)
            if accepted:
                filtered[tp] = accepted
        return filtered

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        for tp, offset in committed.items():
            self.gap_guard.seek(tp, offset)
        return committed

    async def _seek(self, partition: TP, offset: int) -> None:
        await super()._seek(partition, offset)
        self.gap_guard.seek(partition, offset)

    def _new_offset(self, tp: TP) -> int | None:
        # Faust's version lets the commit jump over the message AT the committed offset: its
        # "gap at the head" test is ``min(acked) - committed > 1`` while the committed offset is
        # already the next offset to read. A message fetched but never acked (Faust clears agent
        # queues on a rebalance) could then be committed as processed: lost.
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed is not None:
            gaps = self._gap[tp]
            covered = set(acked)
            for interval in gaps.overlap(0, max(acked) + 1) if gaps else ():
                covered.update(range(interval.begin, interval.end))
            if min(covered) > committed:
                self.gap_guard.commits_refused += 1
                return None
        return super()._new_offset(tp)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        outputs: OutputSink | None = getattr(self.app, "outputs", None)
        if outputs is not None:
            timeout = cast(StreamApp, self.app).agentstream.streams.output_timeout_seconds
            await asyncio.get_running_loop().run_in_executor(None, outputs.flush, timeout)
        return await super()._commit(offsets)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.gap_guard.forget(revoked)
        await super().on_partitions_revoked(revoked)


class TansuSafeTransport(faust_aiokafka.Transport):
    Consumer = TansuSafeConsumer


class ChangelogTable(faust.Table):
    """A Faust table whose changelog records go through the workers' librdkafka producer.

    Same topic, partition, key and value bytes as Faust would write, at a fraction of the CPU; the
    records are flushed with every other output before source offsets are committed, so the
    at-least-once contract of Faust's own path holds.
    """

    def on_key_set(self, key: Any, value: Any) -> None:
        self._send(key, value, self.value_serializer)

    def on_key_del(self, key: Any) -> None:
        self._send(key, None, "raw")

    def _send(self, key: Any, value: Any, value_serializer: Any) -> None:
        serializers = self.app.serializers
        key_bytes = serializers.dumps_key(self.key_type, key, serializer=self.key_serializer)
        value_bytes = (
            None
            if value is None
            else serializers.dumps_value(self.value_type, value, serializer=value_serializer)
        )
        partition = self.partition_for_key(key)
        cast(StreamApp, self.app).outputs.send(
            self.changelog_topic.get_topic_name(), key_bytes, value_bytes, partition=partition
        )


class StreamApp(faust.App):
    """A Faust app carrying agentstream settings, with the broker-safety fixes above."""

    agentstream: Settings
    gap_guard: GapGuard
    outputs: OutputSink

    def _new_transport(self) -> Any:
        return TansuSafeTransport(self.conf.broker_consumer, self)


def broker_credentials(kafka: Mapping[str, str]) -> faust.auth.Credentials | None:
    """Faust's (aiokafka's) credentials from the librdkafka properties in ``settings.kafka``, so the
    stream workers join a SASL_SSL / SSL cluster (deploy/compose.yaml, the Helm chart) as the other
    clients do; None for PLAINTEXT."""
    protocol = kafka.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    context = (
        ssl.create_default_context(cafile=kafka.get("ssl.ca.location")) if protocol.endswith("SSL") else None
    )
    if not protocol.startswith("SASL"):
        return faust.auth.SSLCredentials(context)
    return faust.auth.SASLCredentials(
        username=kafka.get("sasl.username"),
        password=kafka.get("sasl.password"),
        ssl_context=context,
        mechanism=kafka.get("sasl.mechanisms") or kafka.get("sasl.mechanism") or "PLAIN",
    )


def create_app(
    settings: Settings, *, guarded_topics: Iterable[str] = (), outputs: OutputSink | None = None
) -> StreamApp:
    """The one factory of the stream workers' Faust app, for ``settings`` (resolved: bootstrap
    servers set); every hop declares its topics, tables and agents on the app it returns.

    Args:
        guarded_topics: source topics whose offsets must stay contiguous (see :class:`GapGuard`).
        outputs: where output records and table changelogs go; default a librdkafka
            :class:`~.outputs.OutputProducer` (a test passes a sink that records them).
    """
    streams = settings.streams
    datadir = settings.data_dir / "streams"
    datadir.mkdir(parents=True, exist_ok=True)
    app = StreamApp(
        # prefixed like the topics: the app id names the consumer group and the table changelogs
        settings.topic(streams.app_id),
        broker=[f"kafka://{server.strip()}" for server in (settings.bootstrap_servers or "").split(",")],
        datadir=str(datadir),
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        table_standby_replicas=0,
        broker_credentials=broker_credentials(settings.kafka),
        broker_session_timeout=streams.session_timeout_ms / 1000,
        broker_heartbeat_interval=streams.heartbeat_interval_ms / 1000,
        broker_request_timeout=max(90.0, streams.session_timeout_ms / 1000 + 10),
        broker_commit_interval=streams.commit_interval_seconds,
        producer_linger=streams.producer_linger_ms / 1000,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        web_enabled=streams.web_port > 0,
        web_port=streams.web_port or 6066,
        web_bind="127.0.0.1",
        web_in_thread=False,
        key_serializer="raw",
        value_serializer="raw",
        Table=ChangelogTable,
    )
    app.agentstream = settings
    app.gap_guard = GapGuard(streams.gap_verify_seconds, set(guarded_topics))
    # Not the SDK's delivery timeout (seconds, then its spool): a worker has no spool, and an output
    # that times out crashes it. Outputs outlast a leader failover (tests/integration/test_broker_faults.py).
    producer_config = settings.producer_config(
        **{
            "linger.ms": streams.producer_linger_ms,
            "message.timeout.ms": int(streams.output_timeout_seconds * 1000),
        }
    )
    app.outputs = outputs if outputs is not None else OutputProducer(producer_config)
    return app
