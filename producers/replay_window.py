"""The replay window: what was delivered lately, kept to send again if the broker loses its log.

A broker that comes back having lost its log (a topic re-created with a new topic id, as with the
embedded memory-only broker) no longer has what it acknowledged. The records delivered during the
last ``seconds`` (at most ``limit_bytes`` of values) are sent again, flagged with the
``agentstream-replay`` header so the sink can drop copies it already stored.
"""

from __future__ import annotations

import time
from collections import deque

from agentstream.topics.catalogue import HEADER_REPLAY

from .spool import SpooledRecord

REPLAY_HEADER = (HEADER_REPLAY, b"1")


def flagged(record: SpooledRecord) -> SpooledRecord:
    """``record`` with the replay header: it may be a duplicate of one Kafka already has."""
    if REPLAY_HEADER in record.headers:
        return record
    return SpooledRecord(record.topic, record.key, record.value, (*record.headers, REPLAY_HEADER))


class ReplayWindow:
    """Records delivered in the last ``seconds``, at most ``limit_bytes`` of values (0 in either:
    keep none). Records of ``skip_topic`` (the schemas topic, re-published anyway) are not kept.
    Used by the delivery thread only."""

    def __init__(self, seconds: float, limit_bytes: int, skip_topic: str | None = None) -> None:
        self._seconds = seconds
        self._limit = limit_bytes
        self._skip_topic = skip_topic
        # Records are tuples of immutable values, which the garbage collector untracks: thousands
        # of long-lived objects would make the host's full collections more frequent and slower.
        self._records: deque[tuple[float, SpooledRecord]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._records)

    def remember(self, record: SpooledRecord) -> None:
        """Keep a delivered record; forget those now too old, or over the byte limit."""
        if self._limit <= 0 or self._seconds <= 0 or record.topic == self._skip_topic:
            return
        now = time.monotonic()
        self._records.append((now, record))
        self._bytes += len(record.value)
        cutoff = now - self._seconds
        records = self._records
        while records and (records[0][0] < cutoff or self._bytes > self._limit):
            self._bytes -= len(records.popleft()[1].value)

    def take(self) -> list[SpooledRecord]:
        """Every record kept, oldest first; the window is empty afterwards."""
        taken = [record for _, record in self._records]
        self._records.clear()
        self._bytes = 0
        return taken
