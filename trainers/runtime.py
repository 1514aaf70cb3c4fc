"""The trainer runtime: triplet windows from Kafka, trained one at a time, each published exactly once.

    stream = TripletStream(settings, "sft-support", TripletFilter(task_types=("support",)), window_count=256)
    with stream:
        window = stream.next_window()        # a deduped, filtered window and the offsets it covers
        ...train on window.triplets, publish a version whose lineage carries window.lineage()...
        stream.commit(window)                 # only now: offsets move past the window

A trainer is a consumer of the triplet topic in a group of its own (one group per trainer name), so
each trainer sees every triplet once and several trainers never compete for records. Offsets are
committed by hand, and only after the window's ``ResourceVersion`` is in the resources topic.

Exactly-once training without Kafka transactions. A trainer that dies between publishing a version
and committing its offsets would, on restart, read the same records again. Two things stop it from
training them twice:

* the published version's lineage holds the window's offset ranges; when partitions are assigned,
  the stream starts each one at ``max(committed offset, end of the last published window)``
  (``recover``), so a published window is never read again even if its commit was lost;
* the window id is a hash of the topic, group and offset ranges, and :func:`run_trainer` looks for
  a version carrying that id before training (the same window re-read after a lost commit).

A trainer that dies before publishing loses nothing: its offsets were not committed, so the window
is read again. Triplets are re-emitted with a higher ``version`` when late rewards arrive; a window
keeps the highest version of each ``triplet_id`` and a trainer process skips ids it already trained.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from agentstream.schemas import AvroDeserializer, MalformedRecordError, SchemaStore, Triplet
from agentstream.settings import Settings
from agentstream.topics.catalogue import SCHEMAS, TRIPLETS
from agentstream.topics.schema_resolver import SchemaTopicResolver

if TYPE_CHECKING:
    from rich.progress import Progress

    from agentstream.resources.store import ResourceStore
    from agentstream.schemas import ResourceVersion

logger = logging.getLogger(__name__)

__all__ = [
    "TripletFilter",
    "TripletStream",
    "TripletWindow",
    "WindowOutcome",
    "WindowTrainer",
    "run_trainer",
]

#: ``recover(partitions) -> {partition: offset}``: where published windows end (see module doc).
Recover = Callable[[list[int]], dict[int, int]]
#: triplet ids a stream remembers as trained (re-emissions after late rewards come within hours)
TRAINED_MEMORY = 500_000


@dataclass(frozen=True)
class TripletFilter:
    """Which triplets a trainer learns from.

    ``resource_name`` matches the resource the LLM call was stamped with (a rollout's first
    resource, usually its prompt template), not the resource the trainer publishes.
    """

    resource_name: str | None = None
    task_types: tuple[str, ...] = ()
    modes: tuple[str, ...] = ("train", "prod")
    #: triplets rewarded below this are dropped (``None``: any reward)
    min_reward: float | None = None
    #: drop triplets whose reward has not arrived (yet)
    require_reward: bool = True

    def accepts(self, triplet: Triplet) -> bool:
        if self.resource_name is not None and triplet.resource_name != self.resource_name:
            return False
        if self.task_types and triplet.task_type not in self.task_types:
            return False
        if self.modes and triplet.mode not in self.modes:
            return False
        if triplet.reward is None:
            return not self.require_reward and self.min_reward is None
        return self.min_reward is None or triplet.reward >= self.min_reward

    def describe(self) -> str:
        return orjson.dumps(
            {
                "resource": self.resource_name,
                "task_types": list(self.task_types),
                "modes": list(self.modes),
                "min_reward": self.min_reward,
                "require_reward": self.require_reward,
            },
            option=orjson.OPT_SORT_KEYS,
        ).decode()


@dataclass
class TripletWindow:
    """A closed window: the triplets to train on and the offsets of every record it consumed."""

    topic: str
    group_id: str
    #: partition -> ``(start, end)``, half-open: every record in it was consumed by this window
    ranges: dict[int, tuple[int, int]]
    #: accepted triplets, highest version of each id, in the order they were first seen
    triplets: list[Triplet]
    #: records consumed (accepted, filtered out, older versions and undecodable ones)
    records: int
    closed_by: str
    opened_at: float = field(default_factory=time.time)

    @property
    def window_id(self) -> str:
        """Deterministic: the same offsets of the same topic for the same group give the same id."""
        body = orjson.dumps(
            {
                "topic": self.topic,
                "group": self.group_id,
                "ranges": {str(p): list(r) for p, r in sorted(self.ranges.items())},
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(body).hexdigest()[:16]

    @property
    def time_range(self) -> tuple[int, int]:
        """Creation times (µs) of the oldest and newest triplet."""
        if not self.triplets:
            return (0, 0)
        stamps = [t.created_at for t in self.triplets]
        return (min(stamps), max(stamps))

    def lineage(self) -> dict[str, str]:
        """The window as ``ResourceVersion.lineage`` entries (read back by :func:`window_ends`)."""
        start, end = self.time_range
        return {
            "window.id": self.window_id,
            "window.topic": self.topic,
            "window.group": self.group_id,
            "window.offsets": orjson.dumps(
                {str(p): list(r) for p, r in sorted(self.ranges.items())}
            ).decode(),
            "window.count": str(len(self.triplets)),
            "window.records": str(self.records),
            "window.from_us": str(start),
            "window.to_us": str(end),
            "window.closed_by": self.closed_by,
        }


def window_ends(versions: Iterable[ResourceVersion], topic: str, group_id: str) -> dict[int, int]:
    """Per partition, the end offset of the furthest window these versions were trained on."""
    ends: dict[int, int] = {}
    for version in versions:
        lineage = version.lineage
        if lineage.get("window.topic") != topic or lineage.get("window.group") != group_id:
            continue
        try:
            ranges = orjson.loads(lineage.get("window.offsets", "{}"))
        except orjson.JSONDecodeError:
            logger.warning(
                "%s v%d: unreadable window.offsets in its lineage", version.resource_name, version.version
            )
            continue
        for partition, (_, end) in ranges.items():
            ends[int(partition)] = max(ends.get(int(partition), 0), int(end))
    return ends


class _OpenWindow:
    """The window being filled: offset ranges, and the latest version of every triplet id seen."""

    def __init__(self) -> None:
        self.ranges: dict[int, tuple[int, int]] = {}
        self.latest: dict[str, Triplet] = {}
        self.accepted: dict[str, None] = {}  # ordered set
        self.records = 0
        self.first_accepted_at: float | None = None

    def consumed(self, partition: int, offset: int, start: int | None) -> None:
        first, _ = self.ranges.get(partition, (offset if start is None else start, offset))
        self.ranges[partition] = (first, offset + 1)
        self.records += 1


class TripletStream:
    """Reads the triplet topic in windows for the trainer ``name``.

    Args:
        settings: where Kafka is (resolved); ``settings.trainer`` gives the group prefix and timeouts.
        name: the trainer's name: its consumer group is ``settings.trainer.group_id_prefix + name``.
        triplet_filter: which triplets count.
        window_count: a window closes once this many distinct accepted triplets are in it.
        window_seconds: ...or this long after its first accepted triplet (``None``: count only).
        recover: where published windows end, per partition (see the module doc); consulted at
            every assignment.
        skip_trained: drop triplet ids this process already trained (re-emissions after late rewards).
    """

    def __init__(
        self,
        settings: Settings,
        name: str,
        triplet_filter: TripletFilter | None = None,
        *,
        window_count: int | None = None,
        window_seconds: float | None = None,
        recover: Recover | None = None,
        skip_trained: bool = True,
    ) -> None:
        self.settings = settings.resolved()
        self.name = name
        self.filter = triplet_filter or TripletFilter()
        self.window_count = window_count or self.settings.trainer.window_count
        self.window_seconds = (
            window_seconds if window_seconds is not None else self.settings.trainer.window_seconds
        )
        self.recover = recover
        self.skip_trained = skip_trained
        self.topic = self.settings.topic(TRIPLETS.name)
        self.group_id = f"{self.settings.trainer.group_id_prefix}{name}"
        self._consumer: Consumer | None = None
        #: where the next window starts per assigned partition (``None``: the first record read)
        self._starts: dict[int, int | None] = {}
        self._pending: deque[Message] = deque()
        self._window = _OpenWindow()
        self._trained: OrderedDict[str, int] = OrderedDict()
        self._last_progress_commit = 0.0
        resolver = SchemaTopicResolver(
            self.settings.consumer_config("unused"), self.settings.topic(SCHEMAS.name)
        )
        self._deserializer = AvroDeserializer(
            store=SchemaStore.shipped(resolver), registry=self.settings.schema_registry_url
        )
        self.undecodable = 0

    # ---- lifecycle ----------------------------------------------------------------------------------
    def open(self) -> TripletStream:
        if self._consumer is not None:
            return self
        timeout_ms = self.settings.trainer.session_timeout_ms
        consumer = Consumer(
            self.settings.consumer_config(
                self.group_id,
                **{
                    "client.id": f"agentstream-trainer-{self.name}",
                    "session.timeout.ms": timeout_ms,
                    "heartbeat.interval.ms": max(100, min(1_000, timeout_ms // 3)),
                    # training a window can take long: the group must not evict us meanwhile
                    "max.poll.interval.ms": 24 * 3600 * 1000,
                },
            )
        )
        consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self._consumer = consumer
        return self

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> TripletStream:
        return self.open()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def assignment(self) -> list[int]:
        return sorted(self._starts)

    @property
    def filling(self) -> int:
        """Accepted triplets in the window being filled."""
        return len(self._window.accepted)

    # ---- windows ------------------------------------------------------------------------------------
    def next_window(
        self,
        stop: threading.Event | None = None,
        timeout: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> TripletWindow | None:
        """Block until a window closes; ``None`` when ``stop`` is set or ``timeout`` passes first.

        ``progress(accepted, consumed)`` is called as the window fills. Records after the closing
        one stay buffered for the next window.
        """
        consumer = self._require_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            closed = self._drain_pending()
            if closed is not None:
                return closed
            if stop is not None and stop.is_set():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                return None
            self._pending.extend(consumer.consume(num_messages=500, timeout=0.1))
            if progress is not None:
                progress(len(self._window.accepted), self._window.records)
            if not self._pending:
                closed = self._close_if_due(time.monotonic())
                if closed is not None:
                    return closed
                self._commit_idle_progress()

    def commit(self, window: TripletWindow) -> None:
        """Move the group's offsets past ``window`` (after its version is published)."""
        consumer = self._require_open()
        offsets = [TopicPartition(self.topic, p, end) for p, (_, end) in sorted(window.ranges.items())]
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=False)
        if self.skip_trained:
            for triplet in window.triplets:
                self._trained[triplet.triplet_id] = triplet.version
            while len(self._trained) > TRAINED_MEMORY:
                self._trained.popitem(last=False)

    # ---- internals ----------------------------------------------------------------------------------
    def _require_open(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the triplet stream is not open")
        return self._consumer

    def _drain_pending(self) -> TripletWindow | None:
        while self._pending:
            message = self._pending.popleft()
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    logger.warning("%s: consumer error: %s", self.name, error)
                continue
            partition = message.partition()
            if partition not in self._starts:
                continue  # fetched before a revocation: it will be read again by its new owner
            self._window.consumed(partition, message.offset(), self._starts[partition])
            triplet = self._decode(message)
            if triplet is not None:
                self._add(triplet)
            closed = self._close_if_due(time.monotonic())
            if closed is not None:
                return closed
        return None

    def _decode(self, message: Message) -> Triplet | None:
        try:
            value = message.value()
            if value is None:
                raise MalformedRecordError("tombstone")
            return Triplet.from_avro(self._deserializer(value))
        except (MalformedRecordError, ValueError) as e:
            self.undecodable += 1
            logger.error(
                "%s: skipping undecodable triplet %s[%d]@%d: %s",
                self.name,
                message.topic(),
                message.partition(),
                message.offset(),
                e,
            )
            return None

    def _add(self, triplet: Triplet) -> None:
        window = self._window
        trained = self._trained.get(triplet.triplet_id)
        if trained is not None:
            logger.debug(
                "%s: %s v%d was already trained (v%d)",
                self.name,
                triplet.triplet_id,
                triplet.version,
                trained,
            )
            return
        current = window.latest.get(triplet.triplet_id)
        if current is not None and current.version >= triplet.version:
            return  # a re-delivered or older revision
        window.latest[triplet.triplet_id] = triplet
        if self.filter.accepts(triplet):
            window.accepted[triplet.triplet_id] = None
            if window.first_accepted_at is None:
                window.first_accepted_at = time.monotonic()
        else:
            window.accepted.pop(triplet.triplet_id, None)  # a later revision may fall out (a lower reward)

    def _close_if_due(self, now: float) -> TripletWindow | None:
        window = self._window
        if not window.accepted:
            return None
        if len(window.accepted) >= self.window_count:
            return self._close("count")
        if (
            self.window_seconds is not None
            and window.first_accepted_at is not None
            and now - window.first_accepted_at >= self.window_seconds
        ):
            return self._close("time")
        return None

    def _close(self, closed_by: str) -> TripletWindow:
        window = self._window
        closed = TripletWindow(
            topic=self.topic,
            group_id=self.group_id,
            ranges=dict(window.ranges),
            triplets=[window.latest[i] for i in window.accepted],
            records=window.records,
            closed_by=closed_by,
        )
        for partition, (_, end) in window.ranges.items():
            self._starts[partition] = end
        self._window = _OpenWindow()
        return closed

    def _commit_idle_progress(self) -> None:
        """Records that were all filtered out need no training: commit past them (at most once a second)."""
        window = self._window
        if window.accepted or not window.ranges or time.monotonic() - self._last_progress_commit < 1.0:
            return
        consumer = self._require_open()
        offsets = [TopicPartition(self.topic, p, end) for p, (_, end) in sorted(window.ranges.items())]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            logger.warning("%s: could not commit filtered-out records: %s", self.name, e)
            return
        for partition, (_, end) in window.ranges.items():
            self._starts[partition] = end
        self._window = _OpenWindow()
        self._last_progress_commit = time.monotonic()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        committed: dict[int, int] = {}
        try:
            for tp in consumer.committed(partitions, timeout=10):
                if tp.offset >= 0:
                    committed[tp.partition] = tp.offset
        except KafkaException as e:
            logger.warning(
                "%s: could not read committed offsets (%s); the broker's positions are used", self.name, e
            )
        published = self.recover(numbers) if self.recover is not None else {}
        ahead = []
        for tp in partitions:
            start = committed.get(tp.partition)
            end = published.get(tp.partition)
            if end is not None and (start is None or end > start):
                # published, but the commit was lost: never read that window again
                logger.warning(
                    "%s: partition %d resumes at %d, where its last published window ended (committed: %s)",
                    self.name,
                    tp.partition,
                    end,
                    start,
                )
                start = end
                ahead.append(TopicPartition(self.topic, tp.partition, end))
            if start is not None:
                tp.offset = start
            self._starts[tp.partition] = start
        consumer.assign(partitions)
        if ahead:
            try:
                consumer.commit(offsets=ahead, asynchronous=False)
            except KafkaException as e:  # the next window's commit covers these offsets anyway
                logger.warning("%s: could not commit recovered offsets: %s", self.name, e)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # the eager assignor takes every partition back: the open window (never committed) is
        # dropped and re-read from the committed offsets by whoever gets the partitions
        self._starts.clear()
        self._pending.clear()
        self._window = _OpenWindow()


# ---- the loop ----------------------------------------------------------------------------------------
@dataclass
class WindowOutcome:
    """What became of one window: the version trained on it, or why there is none."""

    window: TripletWindow
    version: ResourceVersion | None
    #: "published", "already published" (a re-read window), or "skipped: <reason>"
    status: str


class WindowTrainer:
    """What :func:`run_trainer` drives: one algorithm that turns a window into a published version.

    Subclasses (``StreamSFTTrainer``, ``KTOFromLogs``, ...) set ``name``, ``resource_name`` and
    ``triplet_filter`` and implement :meth:`train_window`.
    """

    name: str
    resource_name: str
    triplet_filter: TripletFilter

    def train_window(
        self, window: TripletWindow, stop: threading.Event | None = None, progress: Progress | None = None
    ) -> WindowOutcome:
        raise NotImplementedError


def run_trainer(
    trainer: WindowTrainer,
    settings: Settings,
    store: ResourceStore,
    *,
    window_count: int | None = None,
    window_seconds: float | None = None,
    once: bool = False,
    max_windows: int | None = None,
    stop: threading.Event | None = None,
    idle_timeout: float | None = None,
    show_progress: bool = True,
    on_window: Callable[[WindowOutcome], None] | None = None,
) -> list[WindowOutcome]:
    """Consume, train per window, publish, commit; repeat until ``stop`` (or one window with ``once``).

    ``idle_timeout`` ends the run when no window closes for that long (scripts, tests).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agentstream.trainers.checkpoint import find_window_version, published_versions

    stop = stop or threading.Event()
    limit = 1 if once else max_windows

    def recover(_partitions: list[int]) -> dict[int, int]:
        return window_ends(
            published_versions(store, trainer.resource_name, trainer.name), stream.topic, stream.group_id
        )

    stream = TripletStream(
        settings,
        trainer.name,
        trainer.triplet_filter,
        window_count=window_count,
        window_seconds=window_seconds,
        recover=recover,
    )
    outcomes: list[WindowOutcome] = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=False,
    )
    with stream, progress:
        while not stop.is_set() and (limit is None or len(outcomes) < limit):
            filling = progress.add_task(f"window {len(outcomes) + 1}: triplets", total=stream.window_count)
            window = stream.next_window(
                stop,
                idle_timeout,
                lambda accepted, _records, task=filling: progress.update(task, completed=accepted),
            )
            progress.remove_task(filling)
            if window is None:
                break
            existing = find_window_version(store, trainer.resource_name, window.window_id)
            if existing is not None:
                logger.warning(
                    "%s: window %s was already trained into %s v%d; not training it again",
                    trainer.name,
                    window.window_id,
                    existing.resource_name,
                    existing.version,
                )
                outcome = WindowOutcome(window, existing, "already published")
            else:
                outcome = trainer.train_window(window, stop, progress)
                if outcome.version is None and stop.is_set():
                    break  # interrupted: nothing published, nothing committed
            stream.commit(window)
            outcomes.append(outcome)
            if outcome.version is not None:
                progress.console.print(
                    f"{trainer.name}: window {window.window_id} ({len(window.triplets)} triplets) -> "
                    f"{outcome.version.resource_name} v{outcome.version.version} [{outcome.status}]"
                )
            else:
                progress.console.print(f"{trainer.name}: window {window.window_id}: {outcome.status}")
            if on_window is not None:
                on_window(outcome)
    return outcomes
