"""The spools one delivery worker holds: bounded on disk, replayed in order, poison set aside.

A :class:`SpoolKeeper` owns the worker's own spool (created at its first outage) and the spools it
adopted from exited processes. It enforces ``sdk.spool_max_bytes`` and replays segments oldest
first; a segment that cannot be read whole is moved to ``<spool_dir>/quarantine/`` after what can
be read of it was replayed, so no process replays it forever.

When the spool is full, the **newest** records are dropped (counted, and logged once per outage):
from the first record that does not fit until Kafka is back, every record is dropped.
That is what a user expects of a bounded buffer, and the one that keeps the data usable: the spool
keeps the outage's beginning in order, rollouts stay whole up to one point in time, and the loss is
one contiguous tail reported with its size. Dropping the oldest instead would delete records the
agent was told were safe, leave rollouts without their start, and rewrite segments mid-replay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from .delivery_stats import DeliveryStats
from .spool import Spool, SpooledRecord

logger = logging.getLogger(__name__)


class SpoolKeeper:
    """The spools of one delivery worker. ``append`` may run on any thread; the rest on the
    delivery thread.

    Args:
        root: the spool directory (``Settings.spool_dir``).
        name: spool directory prefix (the service name).
        max_bytes: what this worker may hold on disk, its adopted spools included (0: no bound).
        stats: the worker's counters (``spooled``, ``spool_bytes``, ``spool_dropped``,
            ``replayed``, ``quarantined``).
    """

    def __init__(self, root: Path, name: str, max_bytes: int, stats: DeliveryStats) -> None:
        self.root = root
        self._name = name
        self._max_bytes = max_bytes
        self._stats = stats
        self._own: Spool | None = None
        self._orphans: list[Spool] = []
        # Re-entrant: a span ended by a garbage-collector finalizer may append from inside append.
        self._lock = threading.RLock()
        self._dropped = 0  # in this outage
        self._stuck: set[Path] = set()  # unreadable segments that could not be moved aside either

    @property
    def own(self) -> Spool | None:
        return self._own

    def adopt_orphans(self) -> None:
        """Take over the spools of exited processes (replayed before our own)."""
        self._orphans = Spool.orphans(self.root)
        if self._orphans:
            logger.info("Spool: adopted %d spool(s) of exited processes", len(self._orphans))
        self._update_bytes()

    def bytes(self) -> int:
        own = self._own.bytes if self._own is not None else 0
        return own + sum(spool.bytes for spool in tuple(self._orphans))

    def _update_bytes(self) -> None:
        self._stats.spool_bytes = self.bytes()

    def pending(self) -> bool:
        """Whether anything spooled waits for replay."""
        return bool(self._orphans) or (self._own is not None and not self._own.is_empty(self._stuck))

    def append(self, record: SpooledRecord) -> bool:
        """Spool ``record``; False if it was dropped because the spool is full.

        Raises:
            OSError: the spool cannot be written (a full or unwritable disk).
        """
        frame = Spool.frame(record)
        with self._lock:
            # Once full, full until Kafka is back: a smaller record that would still fit must not
            # follow the ones dropped before it, so what is kept stays one unbroken beginning.
            if self._dropped or (self._max_bytes and self.bytes() + len(frame) > self._max_bytes):
                self._drop(record)
                return False
            if self._own is None:
                self._own = Spool.create(self.root, self._name)
            self._own.append(frame)
            self._stats.spooled += 1
            self._update_bytes()
            return True

    def _drop(self, record: SpooledRecord) -> None:
        self._stats.spool_dropped += 1
        self._dropped += 1
        if self._dropped == 1:
            logger.warning(
                "Spool: %s is full (sdk.spool_max_bytes=%d); dropping the newest records until "
                "Kafka takes the spooled ones (first dropped: a record to %s)",
                self.root,
                self._max_bytes,
                record.topic,
            )

    def outage_over(self) -> None:
        """Kafka is back: report what this outage dropped, and warn again at the next one."""
        with self._lock:
            if self._dropped:
                logger.warning(
                    "Spool: %d records were dropped while the spool was full "
                    "(raise sdk.spool_max_bytes to keep more through an outage)",
                    self._dropped,
                )
            self._dropped = 0

    def replay(self, send: Callable[[SpooledRecord], None], settle: Callable[[], bool]) -> bool:
        """Send spooled records, oldest spool and segment first; True once all are delivered.

        ``send`` hands one record to Kafka; it must not spool it again when Kafka fails (the
        segment keeps it until it is released). ``settle`` waits until every record sent is
        acknowledged, dead-lettered or failed, and says whether Kafka is still reachable; if not,
        the segment stays for the next replay.
        """
        spools = [*self._orphans, *([self._own] if self._own is not None else [])]
        for spool in spools:
            for segment in spool.seal():
                if segment in self._stuck:
                    continue
                records, problem = Spool.scan_segment(segment)
                for record in records:
                    send(record)
                if not settle():
                    return False
                if problem:
                    self._quarantine(spool, segment, len(records), problem)
                else:
                    spool.release(segment, len(records))
                self._stats.replayed += len(records)
                self._update_bytes()
            if spool is not self._own:
                spool.close(remove_if_empty=True)
                self._orphans.remove(spool)
        self._update_bytes()
        return True

    def _quarantine(self, spool: Spool, segment: Path, records: int, problem: str) -> None:
        self._stats.quarantined += 1
        try:
            target = spool.quarantine(segment, records)
        except OSError as e:
            self._stuck.add(segment)
            logger.error("Spool: %s %s and cannot be moved aside (%s); skipping it", segment, problem, e)
            return
        logger.warning(
            "Spool: %s %s; its %d readable records were sent, the file is kept as %s",
            segment,
            problem,
            records,
            target,
        )

    def flush(self) -> None:
        if self._own is not None:
            self._own.flush()

    def close(self) -> None:
        """Close our spools, keeping what is undelivered for the next process."""
        for spool in self._orphans:
            spool.close(remove_if_empty=True)
        self._orphans = []
        own = self._own
        if own is None:
            return
        left = len(own)
        own.close(remove_if_empty=True)
        if left:
            logger.warning(
                "%d undelivered records remain in %s; they are sent on the next run", left, own.directory
            )
