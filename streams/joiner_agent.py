"""The triplet joiner hop: LLM-call spans + rewards ──▶ the ``joins`` table ──▶ triplets.

    spans ───┐
             ├──triplet-joiner agent──▶ joins table (rollout id -> JoinRecord) ──▶ triplets
    rewards ─┘                     └──▶ the reward counted on the rollout's state (lifecycle hop)

The credit assignment and the versioned, retractable triplet updates are :class:`.join.RolloutJoin`'s;
this hop feeds it calls and rewards and sends the triplets it returns. The joins table holds where
each call's span is, not its content (see :mod:`.calls`).

Every source topic has exactly one consuming agent (a message delivered to two agents is acked only
when both are done, and a rebalance can clear one agent's queue): rewards are read here only, and
this agent also counts them on the rollout's state (:meth:`.lifecycle_agent.LifecycleHop.record_reward`).
Both agents own the same partitions, so both tables are local.

Declared by a class that receives the app, like every hop: topic names and partition counts come
from the worker's settings, resolved when the worker starts, so nothing can be declared at import.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.types import Message, StreamT

from agentstream.schemas import MalformedRecordError, now_us
from agentstream.topics.catalogue import HEADER_EVENT_ID, REWARDS, SPANS, TRIPLETS

from .app import StreamApp
from .archive import Archive, CallArchive
from .calls import CallContentStore, call_content, strategy_for, triplet_from_update
from .join import (
    RolloutJoin,
    TripletUpdate,
    is_evaluation_span,
    llm_call_of,
    reward_event_of,
    triplet_id_for,
)
from .lifecycle_agent import LifecycleHop
from .outputs import DeadLetters, Headers, WorkerStats
from .records import JoinRecord, JoinRecordValue, Serdes, raw_topic, rollout_table

logger = logging.getLogger(__name__)

#: where each call's span is: span id -> [partition, offset] in the spans topic
Locations = dict[str, list[int]]
#: the location of a call read back from ClickHouse (not in the spans topic any more)
ARCHIVED = [-1, -1]


class JoinerHop:
    """The ``triplet-joiner`` agent and the ``joins`` table.

    Args:
        app: the worker's app (see :func:`.app.create_app`); its settings name the topics and the
            credit-assignment defaults.
        serdes: the worker's decoders and encoders.
        stats: the worker's counters.
        dead_letters: where records that cannot be decoded or joined go.
        lifecycle: the rollouts' states (a rollout's credit strategy, task type and mode), where
            rewards are also counted.
        archive: what the sink stored, to read back the calls of a reward the worker lost (see
            :mod:`.archive`); ``None``: such a reward waits for its calls.
    """

    def __init__(
        self,
        app: StreamApp,
        serdes: Serdes,
        stats: WorkerStats,
        dead_letters: DeadLetters,
        lifecycle: LifecycleHop,
        archive: Archive | None = None,
    ) -> None:
        settings = app.agentstream
        streams = settings.streams
        self.spans_and_rewards_topic = raw_topic(
            app, settings.topic(SPANS.name), settings.topic(REWARDS.name)
        )
        #: rollout id -> JoinRecord (held as objects; serialized only for the changelog)
        self.joins = rollout_table(app, "joins", JoinRecordValue, settings.partitions)
        self.join_triplets = app.agent(self.spans_and_rewards_topic, name="triplet-joiner")(
            self._join_triplets
        )

        #: the content of recent calls; the others are re-read from the spans topic
        self.calls = CallContentStore(
            settings.consumer_config("unused"),
            settings.topic(SPANS.name),
            serdes.decode_span,
            streams.call_cache_size,
        )
        self._outputs = app.outputs
        self._spans_topic_name = settings.topic(SPANS.name)
        self._triplets_topic_name = settings.topic(TRIPLETS.name)
        self._horizon_us = int(streams.late_reward_horizon_seconds * 1_000_000)
        self._streams = streams
        self._emit_uncredited = streams.emit_uncredited_calls
        self._train_on_judges = streams.train_on_judge_calls
        #: calls this worker no longer holds (its table was lost with the broker's log), from ClickHouse
        self.archive = CallArchive(archive)
        self._started_us = now_us()
        self._serdes = serdes
        self._stats = stats
        self._dead_letters = dead_letters
        self._lifecycle = lifecycle
        lifecycle.on_rollout_changed(self.on_rollout_changed)

    # ---- the agent ---------------------------------------------------------------------------------
    async def _join_triplets(self, stream: StreamT) -> None:
        async for event in stream.events():
            self.on_record(event.message)

    def on_record(self, message: Message) -> None:
        """Join one span or reward (a source message) into its rollout; send the triplets it changes."""
        self._stats.events += 1
        try:
            if message.topic == self._spans_topic_name:
                joined = self._add_span(message)
            else:
                joined = self._add_reward(message)
        except (MalformedRecordError, ValueError, KeyError, TypeError) as e:
            self._dead_letters.send(message, e)
            return
        if joined is None:
            return
        join, locations = joined
        self._update(join, locations, message, save_unchanged=True)

    def on_rollout_changed(self, rollout_id: str, message: Message) -> None:
        """The lifecycle learned something of a rollout that its triplets say (task type, mode, its
        credit strategy): re-emit what that changes. ``message`` is the rollout event that did it."""
        record = self.joins.get(rollout_id)
        if record is None:  # no call joined yet: its triplets will be made with the new state
            return
        self._update(record.join, record.locations, message, save_unchanged=False)

    def _update(
        self, join: RolloutJoin, locations: Locations, message: Message, *, save_unchanged: bool
    ) -> None:
        """Bring the join up to the rollout's state (its credit strategy, task type and mode), save
        it and send the triplets that changed."""
        state = self._lifecycle.rollouts.get(join.rollout_id)
        join.set_strategy(*strategy_for(state, self._streams))
        join.set_rollout(
            task_type=state.task_type if state is not None else "",
            mode=state.mode if state is not None else "",
        )
        # changes() first, so that the state checked is the state saved and is encoded once: the
        # check keeps the bytes for the changelog (a refused state is never saved, nor its triplets sent)
        updates = join.changes()
        if not updates and not save_unchanged:
            return
        record = JoinRecord(join, locations)
        try:
            self._serdes.check_join(record)  # its changelog record would be refused
        except MalformedRecordError as e:
            self._dead_letters.send(message, e)
            return
        self.joins[join.rollout_id] = record
        if updates:
            self._emit_triplets(join, locations, updates)

    def _add_span(self, message: Message) -> tuple[RolloutJoin, Locations] | None:
        """The rollout's join with the span's LLM call (or, for another kind, its link: parent and
        whether it grades) added; ``None`` when there is nothing to save."""
        span = self._serdes.decode_span(message.value)
        rollout_id = span["rollout_id"]
        if not rollout_id:
            return None
        self._lifecycle.note_activity(rollout_id, span["end_time"])
        join, locations = self._load_join(rollout_id)
        if span["kind"] != "llm":
            # Kept so a judge call is known whatever order its evaluation span and it come in.
            if not join.add_span_link(span["span_id"], span["parent_span_id"], is_evaluation_span(span)):
                return None  # known already (and it gives no triplet of its own to resend)
            return join, locations
        call = llm_call_of(span)
        if not join.add_call(call):
            self._resend(join, locations)  # redelivered: its outputs may be lost
            return None
        locations[call.span_id] = [message.partition, message.offset]
        self.calls.put(rollout_id, call.span_id, call_content(span))
        return join, locations

    def _add_reward(self, message: Message) -> tuple[RolloutJoin, Locations] | None:
        """The rollout's join with the reward added; ``None`` when there is nothing to save."""
        reward = self._serdes.decode_reward(message.value)
        rollout_id = reward["rollout_id"]
        # Calls are read back only for a rollout whose history this worker may have lost with the
        # broker's log: one it has no state of, or one that began before the worker did. A reward
        # that merely overtook its rollout's spans (another topic) must not cost a query.
        state = self._lifecycle.rollouts.get(rollout_id)
        history_lost = state is None or state.created_at < self._started_us
        self._lifecycle.record_reward(reward, message.partition)
        join, locations = self._load_join(rollout_id)
        # calls read back change the join (in the table's object): it must then be saved and its
        # triplets sent even when the reward itself changes nothing
        read_back = history_lost and not join.calls and self._read_back_calls(join, locations)
        joined = join, locations
        last_call = max((c.end_us for c in join.calls), default=None)
        if last_call is not None and reward["timestamp"] - last_call > self._horizon_us:
            self._stats.late_rewards_dropped += 1
            return joined if read_back else None
        added = join.add_reward(reward_event_of(reward))
        if not added and not read_back:
            self._resend(join, locations)
            return None
        return joined

    def _read_back_calls(self, join: RolloutJoin, locations: Locations) -> bool:
        """A reward for a rollout without calls whose history the worker may have lost (a broker that
        lost its log): its calls may be stored in ClickHouse. Blocking, like the span re-reads (see
        _emit_triplets), and bounded by the archive's query time limit."""
        added = False
        for call, content in self.archive.calls_of(join.rollout_id) or ():
            if join.add_call(call):
                locations[call.span_id] = list(ARCHIVED)
                self.calls.put(join.rollout_id, call.span_id, content)
                added = True
        if added:  # the triplets stored before may have any version: go on above them
            stored = self.archive.triplet_versions(join.rollout_id)
            join.continue_versions(
                {
                    call.span_id: stored[triplet_id]
                    for call in join.calls
                    if (triplet_id := triplet_id_for(join.rollout_id, call.span_id)) in stored
                }
            )
        return added

    def _load_join(self, rollout_id: str) -> tuple[RolloutJoin, Locations]:
        """The rollout's join and its calls' locations; a new one for a rollout not joined yet (its
        strategy, task type and mode are brought up to the rollout's state by ``_update``)."""
        record = self.joins.get(rollout_id)
        if record is None:
            join = RolloutJoin(
                rollout_id,
                *strategy_for(self._lifecycle.rollouts.get(rollout_id), self._streams),
                emit_uncredited=self._emit_uncredited,
                train_on_judge_calls=self._train_on_judges,
            )
            return join, {}
        # the settings may have changed since the state was saved
        record.join.set_options(
            emit_uncredited=self._emit_uncredited, train_on_judge_calls=self._train_on_judges
        )
        return record.join, record.locations

    def _resend(self, join: RolloutJoin, locations: Locations) -> None:
        """A redelivered event changes nothing, but the worker may have died after saving the state
        and before its outputs were acknowledged: send the current triplets again (same ids and
        versions: the sink and trainers keep one copy)."""
        current = join.emitted()
        if current:
            self._stats.resent += len(current)
            self._emit_triplets(join, locations, current)

    def _emit_triplets(self, join: RolloutJoin, locations: Locations, updates: list[TripletUpdate]) -> None:
        # what the triplets say of the rollout is the join's: its fingerprints cover it
        strategy, task_type, mode = join.strategy.value, join.task_type, join.mode
        emitted_at = now_us()
        calls = self.calls
        # held here, not re-read from the cache: fetching may evict what was cached
        contents = {u.span_id: calls.cached(join.rollout_id, u.span_id) for u in updates}
        missing: dict[str, tuple[int, int]] = {
            k: (locations[k][0], locations[k][1]) for k, v in contents.items() if v is None and k in locations
        }
        if any(at == tuple(ARCHIVED) for at in missing.values()):
            archived = {
                call.span_id: content for call, content in self.archive.calls_of(join.rollout_id) or ()
            }
            contents.update(
                {k: archived[k] for k, at in missing.items() if at == tuple(ARCHIVED) and k in archived}
            )
            missing = {k: at for k, at in missing.items() if at != tuple(ARCHIVED)}
        if missing:
            # Blocking on purpose. With an await here a rebalance could run while an event was half
            # processed, and the kill test lost joiner state and outputs (never without the await).
            contents.update(calls.fetch(join.rollout_id, missing))
        for update in updates:
            content = contents.get(update.span_id)
            if content is None:
                logger.error(
                    "span %s of rollout %s is gone from the spans topic: triplet not emitted",
                    update.span_id,
                    join.rollout_id,
                )
                continue
            self._send_triplet(join.rollout_id, update, content, strategy, task_type, mode, emitted_at)

    def _send_triplet(
        self,
        rollout_id: str,
        update: TripletUpdate,
        content: dict[str, Any],
        strategy: str,
        task_type: str,
        mode: str,
        emitted_at: int,
    ) -> None:
        triplet = triplet_from_update(
            rollout_id,
            update,
            content,
            strategy=strategy,
            task_type=task_type,
            mode=mode,
            emitted_at=emitted_at,
        )
        headers: Headers = [(HEADER_EVENT_ID, f"{triplet.triplet_id}@{triplet.version}".encode())]
        self._outputs.send(
            self._triplets_topic_name,
            rollout_id.encode(),
            self._serdes.encode_triplet(triplet.to_avro()),
            headers,
        )
        self._stats.triplets += 1
