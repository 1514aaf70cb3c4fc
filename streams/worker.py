"""The stream workers: topics, tables and agents.

``build_worker(settings)`` declares one Faust app with

* the **lifecycle** agent: rollout events (and rewards, for metrics) → the ``rollouts`` table, whose
  changelog is the compacted ``rollout-state`` topic; it is the only writer of the ``tasks`` topic;
* the **triplet joiner** agent: LLM-call spans and rewards → ``triplets`` (see :mod:`.join`);
* the **timer** that turns overdue attempts into ``attempt_timeout`` / ``attempt_unresponsive``
  events, and flushes per-version metric partials to the ``metrics`` topic.

All source topics are keyed by rollout id with one partition count, so every table is partitioned
like its sources and a worker owns whole rollouts. Outputs carry deterministic ids (attempt ids,
triplet id + version, metric partial + revision): replays after a crash re-send the same records and
the idempotent sinks keep one copy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.serializers import codecs

from agentstream.process.status import status_path
from agentstream.schemas import (
    TERMINAL_ROLLOUT,
    AvroSchema,
    CreditAssignment,
    MalformedRecordError,
    Reward,
    RolloutEvent,
    RolloutEventType,
    RolloutState,
    SchemaStore,
    Triplet,
    genai,
    load_schema,
)
from agentstream.schemas.serde import AvroDeserializer, AvroSerializer, decode_body, read_framing
from agentstream.settings import Settings
from agentstream.topics.catalogue import (
    DEAD_LETTER,
    HEADER_DLQ_CONSUMER,
    HEADER_DLQ_ERROR_CLASS,
    HEADER_DLQ_REASON,
    HEADER_DLQ_SOURCE,
    HEADER_EVENT_ID,
    METRICS,
    REWARDS,
    ROLLOUT_EVENTS,
    ROLLOUT_STATE,
    SCHEMAS,
    SPANS,
    TASKS,
    TRIPLETS,
)
from agentstream.topics.schema_resolver import SchemaTopicResolver

from . import metrics as version_metrics
from .app import StreamApp, create_app
from .calls import CallContentStore, call_content
from .credit import LlmCall, RewardEvent
from .join import RolloutJoin, TripletUpdate
from .lifecycle import RolloutLifecycle, Transition

logger = logging.getLogger(__name__)


def now_us() -> int:
    return time.time_ns() // 1000


class _Utf8(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return obj.encode() if isinstance(obj, str) else bytes(obj)

    def _loads(self, s: bytes) -> str:
        return s.decode()


class _AvroModel(codecs.Codec):
    """A pydantic event model in our Avro framing (so the sink reads table changelogs like any topic)."""

    def __init__(self, model: Any, settings: Settings) -> None:
        super().__init__(model=model)
        schema = load_schema(model.avro_stem)
        self._model = model
        self._encode = AvroSerializer(schema, settings.schema_registry_url)
        self._decode = AvroDeserializer(schema, registry=settings.schema_registry_url)

    def _dumps(self, obj: Any) -> bytes:
        return self._encode(obj.to_avro())

    def _loads(self, s: bytes) -> Any:
        return self._model.from_avro(self._decode(s))


def codec_type(codec: str) -> type:
    """A Faust type hint that names a registered codec; decoded values pass through unchanged.

    Faust derives a table's serializers from its key/value types; this is how a table gets ours.
    """

    class Passthrough:
        _options = type("Options", (), {"serializer": codec})

        @classmethod
        def from_data(cls, data: Any, preferred_type: Any = None) -> Any:
            return data

    Passthrough.__name__ = f"Codec[{codec}]"
    return Passthrough


def _strip_logical(schema: AvroSchema) -> AvroSchema:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "logicalType"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return AvroSchema.from_definition(strip(json.loads(schema.json)))


class MicrosDeserializer(AvroDeserializer):
    """Decodes like :class:`AvroDeserializer` but reads timestamps as plain microsecond ints: no
    datetimes, which cost time, and every comparison here is on integers."""

    def __init__(self, stem: str, store: SchemaStore, registry: Any = None) -> None:
        super().__init__(_strip_logical(load_schema(stem)), store, registry)
        self._stripped: dict[bytes, AvroSchema] = {}

    def __call__(self, data: bytes, ctx: Any = None) -> dict[str, Any]:
        framing = read_framing(data)
        writer = self.writer_schema(framing)
        stripped = self._stripped.get(writer.fingerprint)
        if stripped is None:
            stripped = self._stripped[writer.fingerprint] = _strip_logical(writer)
        return decode_body(stripped, data, framing.header_len, self.reader_schema)


class JoinRecord:
    """The joiner's table value: a rollout's join state and where its calls' spans are."""

    __slots__ = ("join", "locations")

    def __init__(self, join: RolloutJoin, locations: dict[str, list[int]] | None = None) -> None:
        self.join = join
        self.locations = locations if locations is not None else {}


class _JoinCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps({"join": obj.join.to_dict(), "at": obj.locations})

    def _loads(self, s: bytes) -> JoinRecord:
        data = orjson.loads(s)
        return JoinRecord(RolloutJoin.from_dict(data["join"]), data["at"])


@dataclass
class WorkerStats:
    events: int = 0
    triplets: int = 0
    tasks: int = 0
    dead_lettered: int = 0
    late_rewards_dropped: int = 0
    resent: int = 0
    timers_fired: int = 0
    metrics_emitted: int = 0
    started: float = field(default_factory=time.monotonic)


def build_worker(settings: Settings) -> StreamApp:
    """The Faust app of a stream worker (``settings`` resolved: bootstrap servers set)."""
    s = settings
    streams = s.streams
    source_names = [s.topic(t.name) for t in (SPANS, REWARDS, ROLLOUT_EVENTS)]
    app = create_app(s, guarded_topics=source_names)
    stats = WorkerStats()
    app.stats = stats  # type: ignore[attr-defined]

    codecs.register("agentstream-utf8", _Utf8())
    codecs.register("agentstream-rollout-state", _AvroModel(RolloutState, s))
    codecs.register("agentstream-join", _JoinCodec())

    resolver = SchemaTopicResolver(s.consumer_config("unused"), s.topic(SCHEMAS.name))
    store = SchemaStore.shipped(resolver)
    decode_span = MicrosDeserializer("span", store, s.schema_registry_url)
    decode_reward = MicrosDeserializer("reward", store, s.schema_registry_url)
    decode_event = MicrosDeserializer("rollout_event", store, s.schema_registry_url)
    encode_task = AvroSerializer(load_schema("task"), s.schema_registry_url)
    encode_event = AvroSerializer(load_schema("rollout_event"), s.schema_registry_url)
    encode_triplet = AvroSerializer(load_schema("triplet"), s.schema_registry_url)
    encode_metrics = AvroSerializer(load_schema("version_metrics"), s.schema_registry_url)

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(
            *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    # ---- topics ----------------------------------------------------------------------------------
    events_topic = raw_topic(s.topic(ROLLOUT_EVENTS.name))
    joiner_sources = raw_topic(s.topic(SPANS.name), s.topic(REWARDS.name))
    outputs = app.outputs
    events_name, tasks_name, triplets_name = (s.topic(t.name) for t in (ROLLOUT_EVENTS, TASKS, TRIPLETS))
    metrics_name, dead_letter_name = s.topic(METRICS.name), s.topic(DEAD_LETTER.name)
    utf8, state_codec, json_codec = (
        codec_type("agentstream-utf8"),
        codec_type("agentstream-rollout-state"),
        codec_type("json"),
    )
    state_topic = app.topic(
        s.topic(ROLLOUT_STATE.name),
        key_type=utf8,
        value_type=state_codec,
        key_serializer="agentstream-utf8",
        value_serializer="agentstream-rollout-state",
        partitions=s.partitions,
        compacting=True,
        deleting=False,
    )

    # ---- tables ----------------------------------------------------------------------------------
    def table(name: str, value_type: type, **kwargs: Any) -> Any:
        return app.Table(
            name, default=None, key_type=utf8, value_type=value_type, partitions=s.partitions, **kwargs
        )

    #: rollout id -> RolloutState; its changelog is the compacted rollout-state topic
    rollouts = table("rollouts", state_codec, changelog_topic=state_topic)
    #: rollout id -> JoinRecord (held as objects; serialized only for the changelog)
    joins = table("joins", codec_type("agentstream-join"))
    calls = CallContentStore(
        s.consumer_config("unused"), s.topic(SPANS.name), decode_span, streams.call_cache_size
    )
    #: metrics partial key -> counters (see .metrics)
    metric_partials = table("metric-partials", json_codec)

    lifecycle = RolloutLifecycle()
    # In-memory only (rebuilt from new events after a restart): hints, never the source of truth.
    last_activity: dict[str, int] = {}
    watched: dict[str, int] = {}  # rollout id -> partition, rollouts whose attempts a timer checks
    fired: set[tuple[str, str]] = set()
    emitted_revisions: dict[str, int] = {}

    # ---- helpers -----------------------------------------------------------------------------------
    def dead_letter(message: Any, error: BaseException) -> None:
        stats.dead_lettered += 1
        reason = f"{type(error).__name__}: {error}"[:2000]
        logger.warning(
            "stream worker: %s/%s/%s to the dead-letter topic: %s",
            message.topic,
            message.partition,
            message.offset,
            reason,
        )
        headers = list(message.headers or ()) + [
            (HEADER_DLQ_REASON, reason.encode()),
            (HEADER_DLQ_ERROR_CLASS, type(error).__name__.encode()),
            (HEADER_DLQ_SOURCE, f"{message.topic}/{message.partition}/{message.offset}".encode()),
            (HEADER_DLQ_CONSUMER, streams.app_id.encode()),
        ]
        outputs.send(dead_letter_name, message.key, message.value, headers)

    def strategy_for(rollout_id: str) -> tuple[str, float]:
        state = rollouts.get(rollout_id)
        config = state.config if state is not None else None
        if config is not None and config.credit_assignment:
            strategy = config.credit_assignment.value
        else:
            task_type = state.task_type if state is not None else ""
            strategy = streams.credit_assignment.get(task_type, streams.default_credit_assignment)
        discount = config.discount if config is not None and config.discount else streams.discount
        return CreditAssignment(strategy).value, discount

    def send_tasks(transition: Any) -> None:
        for task in transition.tasks:
            key = task.rollout_id.encode()
            headers = [(HEADER_EVENT_ID, f"{task.rollout_id}#{task.attempt_number}".encode())]
            outputs.send(tasks_name, key, encode_task(task.to_avro()), headers)
            stats.tasks += 1

    def resend_task(state: RolloutState) -> None:
        """As for triplets: a redelivered event re-sends the task of a still-queued attempt, in case
        it was lost with a crash (a runner that gets it twice runs the same attempt id; the
        lifecycle keeps the first outcome)."""
        task = lifecycle.pending_task(state, now_us())
        if task is not None:
            stats.resent += 1
            send_tasks(Transition(state, tasks=[task]))

    def watch(state: RolloutState, partition: int) -> None:
        config = state.config
        if state.status in TERMINAL_ROLLOUT:
            watched.pop(state.rollout_id, None)
            last_activity.pop(state.rollout_id, None)
        elif config.timeout_seconds is not None or config.unresponsive_seconds is not None:
            watched[state.rollout_id] = partition

    def update_partials(state: RolloutState, partition: int, update: Any) -> None:
        """Apply ``update(partial)`` to the partials of the rollout's versions in its end window."""
        start, end = version_metrics.window_of(state.ended_at or now_us(), streams.metrics_window_seconds)
        for name, version in version_metrics.rollout_versions(state):
            key = version_metrics.partial_key(name, version, start, partition)
            partial = metric_partials.get(key) or version_metrics.empty_partial(end)
            update(partial)
            metric_partials[key] = partial

    def count_outcome(state: RolloutState, partition: int) -> None:
        update_partials(state, partition, lambda partial: version_metrics.add_outcome(partial, state))

    def count_late_reward(state: RolloutState, value: float, partition: int) -> None:
        update_partials(state, partition, lambda partial: version_metrics.add_reward(partial, value))

    # ---- lifecycle -------------------------------------------------------------------------------------
    def record_reward(reward: dict[str, Any], partition: int) -> None:
        """Count a reward on its rollout's state (for per-version metrics)."""
        rollout_id = reward["rollout_id"]
        before = rollouts.get(rollout_id)
        was_ended = before is not None and before.ended_at is not None
        if not math.isfinite(reward["value"]):
            raise ValueError(f"reward value must be finite, got {reward['value']!r}")
        transition = lifecycle.apply_reward(before, Reward.model_construct(**reward), now_us())
        if transition.changed and transition.state is not None:
            rollouts[rollout_id] = transition.state
            if was_ended:
                count_late_reward(transition.state, float(reward["value"]), partition)

    # Every source topic has exactly one consuming agent (a message delivered to two agents is
    # acked only when both are done, and a rebalance can clear one agent's queue): rewards are read
    # by the joiner only, which also counts them on the rollout's state. Both agents own the same
    # partitions, so both tables are local.
    @app.agent(events_topic, name="lifecycle")
    async def lifecycle_agent(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            stats.events += 1
            try:
                rollout_event = RolloutEvent.from_avro(decode_event(message.value))
            except (MalformedRecordError, ValueError) as e:
                dead_letter(message, e)
                continue
            rollout_id = rollout_event.rollout_id
            transition = lifecycle.apply(rollouts.get(rollout_id), rollout_event, now_us())
            if transition.duplicate and transition.state is not None:
                resend_task(transition.state)
            if not transition.changed or transition.state is None:
                continue
            state = transition.state
            send_tasks(transition)
            rollouts[rollout_id] = state
            if transition.ended:
                count_outcome(state, message.partition)
            watch(state, message.partition)

    # ---- triplet joiner --------------------------------------------------------------------------------
    def emit_triplets(
        join: RolloutJoin, locations: dict[str, list[int]], updates: list[TripletUpdate], strategy: str
    ) -> None:
        state = rollouts.get(join.rollout_id)
        task_type = state.task_type if state is not None else ""
        mode = state.mode if state is not None else ""
        emitted_at = now_us()
        # held here, not re-read from the cache: fetching may evict what was cached
        contents = {u.span_id: calls.cached(u.span_id) for u in updates}
        missing = {k: tuple(locations[k]) for k, v in contents.items() if v is None and k in locations}
        if missing:
            # Blocking on purpose. With an await here a rebalance could run while an event was half
            # processed, and the kill test lost joiner state and outputs (never without the await).
            contents.update(calls.fetch(missing))
        for update in updates:
            content = contents.get(update.span_id)
            if content is None:
                logger.error(
                    "span %s of rollout %s is gone from the spans topic: triplet not emitted",
                    update.span_id,
                    join.rollout_id,
                )
                continue
            credit = update.credit
            triplet = Triplet(
                triplet_id=update.triplet_id,
                version=update.version,
                rollout_id=join.rollout_id,
                attempt_id=update.attempt_id,
                span_id=update.span_id,
                step=update.step,
                prompt_messages=content["prompt"],
                prompt_token_ids=content["prompt_ids"],
                response=content["response"],
                response_token_ids=content["response_ids"],
                response_logprobs=content["response_logprobs"],
                reward=credit.reward if credit is not None else None,
                feedback=credit.feedback if credit is not None else None,
                credit_assignment=strategy,
                resource_name=content["resource_name"],
                resource_version=content["resource_version"],
                mode=mode,
                task_type=task_type,
                model=content["model"],
                created_at=content["created_at"],
                emitted_at=emitted_at,
            )
            headers = [(HEADER_EVENT_ID, f"{triplet.triplet_id}@{triplet.version}".encode())]
            outputs.send(triplets_name, join.rollout_id.encode(), encode_triplet(triplet.to_avro()), headers)
            stats.triplets += 1

    def resend(join: RolloutJoin, locations: dict[str, list[int]], strategy: str) -> None:
        """A redelivered event changes nothing, but the worker may have died after saving the state
        and before its outputs were acknowledged: send the current triplets again (same ids and
        versions: the sink and trainers keep one copy)."""
        current = join.emitted()
        if current:
            stats.resent += len(current)
            emit_triplets(join, locations, current, join.strategy.value)

    def load_join(
        rollout_id: str, strategy: str, discount: float
    ) -> tuple[RolloutJoin, dict[str, list[int]]]:
        record = joins.get(rollout_id)
        if record is None:
            return RolloutJoin(rollout_id, strategy, discount), {}
        return record.join, record.locations

    @app.agent(joiner_sources, name="triplet-joiner")
    async def joiner_agent(stream: Any) -> None:
        spans_topic_name = s.topic(SPANS.name)
        horizon_us = int(streams.late_reward_horizon_seconds * 1_000_000)
        async for event in stream.events():
            message = event.message
            stats.events += 1
            try:
                if message.topic == spans_topic_name:
                    span = decode_span(message.value)
                    rollout_id = span["rollout_id"]
                    if not rollout_id:
                        continue
                    last_activity[rollout_id] = max(last_activity.get(rollout_id, 0), span["end_time"])
                    if span["kind"] != "llm":
                        continue
                    strategy, discount = strategy_for(rollout_id)
                    join, locations = load_join(rollout_id, strategy, discount)
                    attributes = span["attributes"]
                    call = LlmCall(
                        span_id=span["span_id"],
                        attempt_id=span["attempt_id"],
                        sequence_id=span["sequence_id"],
                        start_us=span["start_time"],
                        end_us=span["end_time"],
                        response_id=attributes.get(genai.RESPONSE_ID),
                    )
                    if not join.add_call(call):
                        resend(join, locations, strategy)  # redelivered: its outputs may be lost
                        continue
                    locations[call.span_id] = [message.partition, message.offset]
                    calls.put(call.span_id, call_content(span))
                else:
                    reward = decode_reward(message.value)
                    rollout_id = reward["rollout_id"]
                    record_reward(reward, message.partition)
                    strategy, discount = strategy_for(rollout_id)
                    join, locations = load_join(rollout_id, strategy, discount)
                    last_call = max((c.end_us for c in join.calls), default=None)
                    if last_call is not None and reward["timestamp"] - last_call > horizon_us:
                        stats.late_rewards_dropped += 1
                        continue
                    added = join.add_reward(
                        RewardEvent(
                            reward_id=reward["reward_id"],
                            attempt_id=reward["attempt_id"],
                            value=float(reward["value"]),
                            timestamp_us=reward["timestamp"],
                            sequence_id=reward["sequence_id"],
                            span_id=reward["span_id"],
                            response_id=reward["response_id"],
                            feedback=reward["feedback"],
                            name=reward["name"],
                        )
                    )
                    if not added:
                        resend(join, locations, strategy)
                        continue
            except (MalformedRecordError, ValueError, KeyError, TypeError) as e:
                dead_letter(message, e)
                continue
            join.set_strategy(strategy, discount)
            updates = join.changes()
            joins[rollout_id] = JoinRecord(join, locations)
            if updates:
                emit_triplets(join, locations, updates, strategy)

    # ---- timers ------------------------------------------------------------------------------------------
    @app.timer(streams.timer_interval_seconds)
    async def check_attempts() -> None:
        if not watched:
            return
        assigned = {
            tp.partition for tp in app.consumer.assignment() if tp.topic == s.topic(ROLLOUT_EVENTS.name)
        }
        now = now_us()
        for rollout_id, partition in list(watched.items()):
            if partition not in assigned:
                watched.pop(rollout_id, None)
                continue
            state = rollouts.get(rollout_id)
            if state is None:
                continue
            due = lifecycle.due(state, now, last_activity.get(rollout_id))
            attempt = state.current
            if due is None or attempt is None or (attempt.attempt_id, due.value) in fired:
                continue
            fired.add((attempt.attempt_id, due.value))
            event = RolloutEvent(
                event_id=f"{attempt.attempt_id}:{due.value}",
                rollout_id=rollout_id,
                attempt_id=attempt.attempt_id,
                attempt_number=attempt.attempt_number,
                type=due,
                status="timeout" if due == RolloutEventType.ATTEMPT_TIMEOUT else "unresponsive",
                error=(
                    f"no result within timeout_seconds={state.config.timeout_seconds}"
                    if due == RolloutEventType.ATTEMPT_TIMEOUT
                    else f"no heartbeat or span for unresponsive_seconds={state.config.unresponsive_seconds}"
                ),
                worker_id=streams.app_id,
                timestamp=now,
            )
            outputs.send(events_name, rollout_id.encode(), encode_event(event.to_avro()))
            stats.timers_fired += 1

    @app.timer(streams.metrics_flush_seconds)
    async def flush_metrics() -> None:
        emitted_at = now_us()
        for key, partial in list(metric_partials.items()):
            if partial is None or emitted_revisions.get(key) == partial["revision"]:
                continue
            record = version_metrics.to_record(key, partial, emitted_at)
            outputs.send(metrics_name, key.encode(), encode_metrics(record.to_avro()))
            emitted_revisions[key] = partial["revision"]
            stats.metrics_emitted += 1

    own_status = status_path(s.data_dir, os.getpid())

    @app.timer(1.0)
    async def write_status() -> None:
        """A status file per worker: what `agentstream up` shows and tests wait for."""
        assigned = sorted(
            tp.partition for tp in app.consumer.assignment() if tp.topic == s.topic(ROLLOUT_EVENTS.name)
        )
        status = {
            "pid": os.getpid(),
            "ready": bool(assigned) and not app.rebalancing and not getattr(app, "in_recovery", False),
            "assigned_partitions": assigned,
            "gap_rereads": app.gap_guard.rereads,
            "duplicates_dropped": app.gap_guard.duplicates_dropped,
            "span_rereads": calls.rereads,
            "uptime_s": round(time.monotonic() - stats.started, 1),
            **{k: v for k, v in vars(stats).items() if k != "started"},
        }
        tmp = own_status.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(own_status)

    @app.task
    async def warm_outputs() -> None:
        topics = [events_name, tasks_name, triplets_name, metrics_name, dead_letter_name]
        topics += [t.changelog_topic.get_topic_name() for t in (rollouts, joins, metric_partials)]
        await asyncio.get_running_loop().run_in_executor(None, outputs.warm, topics)

    @app.task
    async def publish_schemas() -> None:
        if s.schema_registry_url:
            return
        for stem in ("task", "triplet", "rollout_state", "version_metrics", "rollout_event"):
            schema = load_schema(stem)
            outputs.send(s.topic(SCHEMAS.name), schema.fingerprint.hex().encode(), schema.json.encode())

    return app
