"""What the SDK's delivery did so far: plain counters, read from any thread (e.g. for Prometheus)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DeliveryStats:
    """Counters of one client's delivery (read them from any thread; values are approximate).

    Attributes:
        submitted: records the agent emitted.
        delivered: records Kafka acknowledged.
        spooled: records written to the outage spool.
        replayed: spooled records delivered later.
        dead_lettered: records sent to the dead-letter topic (Kafka refused them, or they could
            not be encoded, or their topic does not exist).
        truncated: records cut to fit ``sdk.max_record_bytes``.
        outages: times Kafka became unreachable.
        window_replays: times the broker lost its log and the replay window was sent again.
        spool_bytes: bytes of spool this client holds on disk now (its own and adopted spools).
        spool_dropped: records dropped because the spool was full (``sdk.spool_max_bytes``).
        quarantined: spool segments moved to ``<spool_dir>/quarantine/`` as unreadable.
        redacted: PII redactions by entity (``{"email": 3, ...}``).
        last_error: the last delivery error, as text.
        connected: whether Kafka is reachable now.
    """

    submitted: int = 0
    delivered: int = 0
    spooled: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    truncated: int = 0
    outages: int = 0
    window_replays: int = 0
    spool_bytes: int = 0
    spool_dropped: int = 0
    quarantined: int = 0
    redacted: dict[str, int] = field(default_factory=dict)
    last_error: str = ""
    connected: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
