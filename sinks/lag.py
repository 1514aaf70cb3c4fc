"""Partitions that stall: records wait in Kafka while nothing reads them.

The sink must never sit on records in silence. Every ``lag_check_seconds`` it asks the broker for
the high watermark of each assigned partition (one ListOffsets request through an admin client,
answered on librdkafka's thread: the consumer loop never waits for it) and compares it with the
position the sink consumed up to (and with the last fetch's high watermark: the embedded broker
answers ListOffsets short). A partition is *stalled* when, for two checks in a row, its
lane was idle (no insert in flight, not paused for back-pressure, nothing batched), its position
did not move and records were waiting (lag > 0, not shrinking): a healthy consumer fetches
waiting records within one fetch wait. Each stall is logged once per episode as a WARNING naming
the partition, its lag and how long it sat idle; :class:`~.writer.SinkStats` counts it, and the
sink resumes the partition (the one way librdkafka stops fetching a partition it still owns).

:class:`StallDetector` holds the decision alone, so it is tested without a broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from .writer import SinkStats

logger = logging.getLogger(__name__)

__all__ = ["LagWatch", "Observation", "Stall", "StallDetector", "Verdict", "resume"]


@dataclass(frozen=True)
class Observation:
    """One partition at one check."""

    #: next offset the sink reads; None while nothing was consumed and no start offset is known
    position: int | None
    #: the partition's high watermark (offset of the next record to be written)
    high: int
    #: the partition's lane has no insert in flight, is not paused for back-pressure, and has an empty batch
    idle: bool

    @property
    def lag(self) -> int:
        return max(self.high - (self.position or 0), 0)


@dataclass(frozen=True)
class Stall:
    """A stall that began: ``partition`` is ``"topic/partition"``."""

    partition: str
    lag: int
    idle_seconds: float


@dataclass
class Verdict:
    """The outcome of one check."""

    lag: dict[str, int]
    #: stalls seen for the first time in their episode (warn about these, once)
    new: list[Stall] = field(default_factory=list)
    #: partitions whose stall ended (read again, caught up, or no longer assigned)
    recovered: list[str] = field(default_factory=list)
    #: partitions stalled now
    stalled: int = 0


@dataclass
class _Streak:
    since: float
    position: int | None
    reported: bool = False


class StallDetector:
    """Decides which partitions are stalled, from successive observations.

    Args:
        after_seconds: how long a partition must sit idle with records waiting and its position
            unchanged before it counts as stalled.
    """

    def __init__(self, after_seconds: float) -> None:
        self.after_seconds = after_seconds
        self._streaks: dict[str, _Streak] = {}

    def observe(self, now: float, observations: Mapping[str, Observation]) -> Verdict:
        """Take one check's observations (partition key -> :class:`Observation`) at time ``now``."""
        verdict = Verdict({key: o.lag for key, o in observations.items()})
        for key in [k for k in self._streaks if k not in observations]:
            if self._streaks.pop(key).reported:
                verdict.recovered.append(key)  # revoked: its next owner reads it
        for key, seen in observations.items():
            streak = self._streaks.get(key)
            waiting = seen.idle and seen.lag > 0
            if streak is not None and (not waiting or seen.position != streak.position):
                del self._streaks[key]
                if streak.reported:
                    verdict.recovered.append(key)
                streak = None
            if not waiting:
                continue
            if streak is None:
                self._streaks[key] = _Streak(now, seen.position)
            elif not streak.reported and now - streak.since >= self.after_seconds:
                streak.reported = True
                verdict.new.append(Stall(key, seen.lag, now - streak.since))
        verdict.stalled = sum(streak.reported for streak in self._streaks.values())
        return verdict


class LagWatch:
    """Runs the checks for a sink: asks for high watermarks, feeds the detector, reports.

    Args:
        admin_config: librdkafka configuration of the admin client that asks for the watermarks.
        interval: seconds between checks; 0 turns the checks off.
        stats: the sink's counters (``lag``, ``stalled_partitions``, ``stalls_detected``).
    """

    def __init__(self, admin_config: dict[str, Any], interval: float, stats: SinkStats) -> None:
        self.interval = interval
        self.stats = stats
        self.detector = StallDetector(after_seconds=2 * interval)
        self._admin = AdminClient(admin_config) if interval > 0 else None
        self._pending: dict[TopicPartition, Future[Any]] | None = None
        self._asked = 0.0
        self._next = 0.0

    def poll(
        self,
        now: float,
        partitions: Callable[[], Iterable[tuple[str, int]]],
        observe: Callable[[str, int, int], Observation | None],
        consumer: Any,
    ) -> None:
        """Call on every loop round; does work only when a check is due or its answer arrived.

        ``partitions()`` lists the assigned partitions; ``observe(topic, partition, high)``
        describes one (None: no longer assigned). Stalled partitions are resumed on ``consumer``.
        """
        if self._admin is None:
            return
        if self._pending is None:
            if now >= self._next:
                self._next = now + self.interval
                self._ask(list(partitions()), now)
            return
        if not all(f.done() for f in self._pending.values()):
            if now - self._asked > 3 * self.interval:  # no answer: ask again at the next check
                logger.debug("Sink: no answer to the watermark request after %.0fs", now - self._asked)
                self._pending = None
            return
        highs: dict[tuple[str, int], int] = {}
        for tp, future in self._pending.items():
            try:
                high = int(future.result().offset)
                # The embedded broker (Tansu) answers ListOffsets with the last record batch's base
                # offset + 1; the last fetch's high watermark is exact (but stale while paused).
                high = max(high, int(consumer.get_watermark_offsets(tp, cached=True)[1]))
            except Exception as e:  # one partition's answer failing must not end the checks
                logger.debug("Sink: no high watermark for %s [%d]: %s", tp.topic, tp.partition, e)
                continue
            highs[(tp.topic, tp.partition)] = high
        self._pending = None
        observations: dict[str, Observation] = {}
        for (topic, partition), high in highs.items():
            seen = observe(topic, partition, high)
            if seen is not None:
                observations[f"{topic}/{partition}"] = seen
        self._report(self.detector.observe(now, observations), consumer)

    def _ask(self, partitions: list[tuple[str, int]], now: float) -> None:
        if not partitions or self._admin is None:
            return
        request = {TopicPartition(t, p): OffsetSpec.latest() for t, p in partitions}
        try:
            self._pending = self._admin.list_offsets(request, request_timeout=max(self.interval, 1.0))
            self._asked = now
        except KafkaException as e:
            logger.debug("Sink: cannot ask for high watermarks: %s", e)

    def _report(self, verdict: Verdict, consumer: Any) -> None:
        with self.stats.lock:
            self.stats.lag = verdict.lag
            self.stats.stalled_partitions = verdict.stalled
            self.stats.stalls_detected += len(verdict.new)
        for stall in verdict.new:
            topic, _, partition = stall.partition.rpartition("/")
            logger.warning(
                "Sink: %s [%s] is stalled: %d records wait in Kafka, and nothing read them for %.0fs "
                "while its insert lane was idle; resuming the partition",
                topic, partition, stall.lag, stall.idle_seconds,
            )  # fmt: skip
            resume(consumer, [(topic, int(partition))])
        for key in verdict.recovered:
            logger.info("Sink: %s is read again (stall over)", key)


def resume(consumer: Any, partitions: Iterable[tuple[str, int]]) -> None:
    """Resume fetching ``partitions`` (a no-op for those not paused); a failure is logged, not raised."""
    tps = [TopicPartition(topic, partition) for topic, partition in partitions]
    try:
        consumer.resume(tps)
    except KafkaException as e:
        logger.warning("Sink: could not resume %d partitions: %s", len(tps), e)
