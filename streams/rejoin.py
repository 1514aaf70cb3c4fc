"""Re-deriving triplets from the log: ``agentstream rejoin --since …``.

The spans and rewards topics are the source of truth; the triplets topic is derived from them. After
a fix in the joiner or a new credit strategy, :func:`rejoin` recomputes the triplets of the retained
rollouts of a time window and writes the ones that differ as *new versions of the same triplet ids*
(ClickHouse's ``ReplacingMergeTree(version)`` then keeps the newest, trainers see an update):

1. read the spans and rewards written since ``since`` (Kafka record time), up to the high watermarks
   taken at the start, and group them by rollout;
2. rebuild each rollout's :class:`.join.RolloutJoin` as the live joiner does (same strategy and
   discount: the rollout's config, else the settings' for its task type, else the default; rewards
   later than the late-reward horizon after the rollout's last call dropped) and take its triplets;
3. read the triplets topic for the latest version and a content fingerprint of every triplet id;
4. emit only what differs, with ``version = last + 1``; a triplet that exists but no longer results
   is retracted as the live joiner retracts (``retracted`` set, no credit). A second run emits
   nothing.

Which rollouts: those whose first record lies in ``[since, until)``. To tell a rollout that began
before ``since`` (whose earlier calls are not read, so re-deriving it from the window alone would
retract them), the log is read from ``since`` minus the late-reward horizon: a rollout with a record
in that guard band is left alone. A rollout silent for longer than the horizon before ``since`` and
active again after it cannot be told apart; give an earlier ``since`` for such rollouts.

Run it on rollouts the live worker has finished with (beyond the late-reward horizon): the worker
keeps its own version counter per triplet, and a later live update of a rejoined triplet would
reuse a version number.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, Producer, TopicPartition

from agentstream.schemas import RolloutState, now_us
from agentstream.settings import Settings
from agentstream.topics.catalogue import HEADER_EVENT_ID, REWARDS, ROLLOUT_STATE, SPANS, TRIPLETS, TopicSpec
from agentstream.topics.io import TopicReader, high_watermarks

from .outputs import Headers
from .records import MicrosDeserializer, Serdes
from .rejoin_plan import (
    ExistingTriplet,
    RolloutLog,
    content_fingerprint,
    derive_triplets,
    plan_versions,
    strategy_for,
)

__all__ = ["RejoinReport", "rejoin"]


@dataclass
class RejoinReport:
    """What a run read, derived and (unless a dry run) emitted."""

    records_read: int = 0
    undecodable: int = 0
    rollouts: int = 0
    rollouts_started_before: int = 0
    triplets_derived: int = 0
    existing_triplets: int = 0
    emitted: int = 0
    new_versions: int = 0
    retracted: int = 0
    unchanged: int = 0
    dry_run: bool = False
    phase: str = ""


Progress = Callable[[RejoinReport], None]


def rejoin(
    settings: Settings,
    since_us: int,
    *,
    until_us: int | None = None,
    rollout_ids: Iterable[str] = (),
    dry_run: bool = False,
    progress: Progress | None = None,
    timeout: float = 300.0,
) -> RejoinReport:
    """Re-derive the triplets of the rollouts whose first record lies in ``[since_us, until_us)``
    (restricted to ``rollout_ids`` when given) and emit those that differ as new versions.

    ``settings`` must be resolved (Kafka reachable); ``progress`` is called as records are read and
    triplets emitted. Raises ``TimeoutError`` when the log cannot be read to its end in ``timeout``
    seconds and ``RuntimeError`` when Kafka refuses emitted triplets.
    """
    report = RejoinReport(dry_run=dry_run)
    notify = progress or (lambda _: None)
    wanted = set(rollout_ids)
    serdes = Serdes.create(settings)
    horizon_us = int(settings.streams.late_reward_horizon_seconds * 1_000_000)
    floor_ms = (since_us - horizon_us) // 1000
    since_ms = since_us // 1000
    until_ms = until_us // 1000 if until_us is not None else None
    consumer = Consumer(
        settings.consumer_config(
            f"agentstream-rejoin-{uuid.uuid4().hex[:8]}",  # never joined: assign() only
            **{"enable.partition.eof": False, "enable.auto.commit": False},
        )
    )
    try:
        logs: dict[str, RolloutLog] = {}
        report.phase = "reading spans and rewards"
        decoders = {
            settings.topic(SPANS.name): serdes.decode_span,
            settings.topic(REWARDS.name): serdes.decode_reward,
        }
        ranks = {settings.topic(SPANS.name): 0, settings.topic(REWARDS.name): 1}

        def on_source(topic: str, partition: int, offset: int, at_ms: int, value: bytes | None) -> None:
            datum = decoders[topic](value)
            rollout_id = datum["rollout_id"]
            if not rollout_id or (wanted and rollout_id not in wanted):
                return
            log = logs.get(rollout_id)
            if log is None:
                log = logs[rollout_id] = RolloutLog(rollout_id, at_ms)
            kind = "span" if ranks[topic] == 0 else "reward"
            log.add(at_ms, ranks[topic], partition, offset, kind, datum)

        _read(consumer, settings, (SPANS, REWARDS), floor_ms, on_source, report, notify, timeout)
        in_scope = {
            rollout_id: log
            for rollout_id, log in logs.items()
            if log.first_ms >= since_ms and (until_ms is None or log.first_ms < until_ms)
        }
        report.rollouts = len(in_scope)
        report.rollouts_started_before = sum(1 for log in logs.values() if log.first_ms < since_ms)
        logs.clear()

        report.phase = "reading triplets"
        decode_triplet = MicrosDeserializer("triplet", serdes.decode_span.store, settings.schema_registry_url)
        fingerprint = content_fingerprint(serdes.encode_triplet)
        existing: dict[str, dict[str, ExistingTriplet]] = {}

        def on_triplet(topic: str, partition: int, offset: int, at_ms: int, value: bytes | None) -> None:
            datum = decode_triplet(value)
            if datum["rollout_id"] not in in_scope:
                return
            held = existing.setdefault(datum["rollout_id"], {})
            before = held.get(datum["triplet_id"])
            if before is None or datum["version"] >= before.version:
                held[datum["triplet_id"]] = ExistingTriplet(datum["version"], fingerprint(datum), datum)

        _read(consumer, settings, (TRIPLETS,), floor_ms, on_triplet, report, notify, timeout)
        report.existing_triplets = sum(len(held) for held in existing.values())
        states = _rollout_states(settings, in_scope.keys(), timeout)

        report.phase = "dry run: nothing emitted" if dry_run else "emitting triplets"
        emitter = None if dry_run else _Emitter(settings, serdes.encode_triplet)
        emitted_at = now_us()
        for rollout_id in sorted(in_scope):
            state = states.get(rollout_id)
            strategy, discount = strategy_for(state, settings.streams)
            derived = derive_triplets(
                in_scope[rollout_id],
                strategy,
                discount,
                horizon_us=horizon_us,
                task_type=state.task_type if state is not None else "",
                mode=state.mode if state is not None else "",
                emit_uncredited=settings.streams.emit_uncredited_calls,
                train_on_judge_calls=settings.streams.train_on_judge_calls,
            )
            report.triplets_derived += len(derived)
            out, retracted, unchanged = plan_versions(
                derived, existing.get(rollout_id, {}), fingerprint, emitted_at
            )
            report.retracted += retracted
            report.new_versions += len(out) - retracted
            report.unchanged += unchanged
            if emitter is not None:
                for datum in out:
                    emitter.send(rollout_id, datum)
                report.emitted += len(out)
            notify(report)
        if emitter is not None:
            emitter.close(timeout)
        report.phase = "done"
        notify(report)
        return report
    finally:
        consumer.close()


RecordHandler = Callable[[str, int, int, int, "bytes | None"], None]


def _read(
    consumer: Consumer,
    settings: Settings,
    specs: Iterable[TopicSpec],
    floor_ms: int,
    on_record: RecordHandler,
    report: RejoinReport,
    notify: Progress,
    timeout: float,
) -> None:
    """Hand every record of ``specs`` written at or after ``floor_ms`` and below the high watermarks
    taken now to ``on_record``; undecodable records are counted and skipped (the live worker has
    dead-lettered them already)."""
    topics = [settings.topic(spec.name) for spec in specs]
    metadata = consumer.list_topics(timeout=10)
    partitions: list[tuple[str, int]] = []
    for topic in topics:
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise RuntimeError(f"topic {topic} does not exist: run `agentstream topics create` (or `up`)")
        partitions.extend((topic, p) for p in sorted(info.partitions))
    ends = high_watermarks(consumer, partitions, timeout=min(timeout, 30.0))
    # Where --since begins. The embedded broker (Tansu) answers every timestamp lookup with offset
    # 0, the beginning: harmless, as records before the floor are skipped by their record time
    # below, but that broker is then read from the start.
    lookup = consumer.offsets_for_times([TopicPartition(t, p, floor_ms) for t, p in partitions], timeout=30)
    starts = {
        (tp.topic, tp.partition): ends[(tp.topic, tp.partition)] if tp.offset < 0 else tp.offset
        for tp in lookup
    }
    pending = {tp: end for tp, end in ends.items() if starts[tp] < end}
    if not pending:
        return
    consumer.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in pending])
    deadline = time.monotonic() + timeout
    try:
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"rejoin: did not read {sorted(pending)} to their end in {timeout}s")
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"rejoin: reading {message.topic()}: {error}")
                    continue
                source, partition, offset = message.topic(), message.partition(), message.offset()
                assert source is not None and partition is not None and offset is not None
                end = pending.get((source, partition))
                if end is None or offset >= end:
                    pending.pop((source, partition), None)  # written after the start: not ours
                    continue
                if offset >= end - 1:
                    pending.pop((source, partition))
                kind, at_ms = message.timestamp()
                if at_ms < floor_ms and kind != TIMESTAMP_NOT_AVAILABLE:  # records without one are read
                    continue
                report.records_read += 1
                try:
                    on_record(source, partition, offset, at_ms, message.value())
                except (ValueError, KeyError, TypeError):  # MalformedRecordError is a ValueError
                    report.undecodable += 1
                if report.records_read % 5000 == 0:
                    notify(report)
    finally:
        consumer.unassign()
    notify(report)


def _rollout_states(
    settings: Settings, rollout_ids: Iterable[str], timeout: float
) -> dict[str, RolloutState]:
    """The latest state of each rollout (compacted rollout-state topic, read whole)."""
    wanted = set(rollout_ids)
    states: dict[str, RolloutState] = {}

    def on_state(_spec: TopicSpec, _key: bytes | None, state: RolloutState) -> None:
        if state.rollout_id in wanted:
            before = states.get(state.rollout_id)
            if before is None or state.version >= before.version:
                states[state.rollout_id] = state

    if wanted:
        TopicReader(settings, (ROLLOUT_STATE,), on_state, name="rejoin-states").read_to_end(timeout)
    return states


class _Emitter:
    """Produces triplet datums (idempotent, acks=all) and checks that Kafka took every one."""

    def __init__(self, settings: Settings, encode: Callable[[dict[str, Any]], bytes]) -> None:
        self._producer = Producer(settings.producer_config())
        self._topic = settings.topic(TRIPLETS.name)
        self._encode = encode
        self._errors: list[str] = []

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send(self, rollout_id: str, datum: dict[str, Any]) -> None:
        value = self._encode(datum)
        headers: Headers = [(HEADER_EVENT_ID, f"{datum['triplet_id']}@{datum['version']}".encode())]
        while True:
            try:
                self._producer.produce(
                    self._topic,
                    value=value,
                    key=rollout_id.encode(),
                    headers=headers,
                    on_delivery=self._delivered,
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)
        self._producer.poll(0)

    def close(self, timeout: float) -> None:
        left = self._producer.flush(timeout)
        if left or self._errors:
            raise RuntimeError(
                f"rejoin: {left} triplets unacknowledged, {len(self._errors)} refused"
                + (f" (first: {self._errors[0]})" if self._errors else "")
            )
