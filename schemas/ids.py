"""Identities and clocks every event shares: microsecond timestamps and rollout ids."""

from __future__ import annotations

import random
import time


def now_us() -> int:
    """Wall-clock time in microseconds since the epoch: the unit of every ``*_at`` field."""
    return time.time_ns() // 1_000


def new_rollout_id() -> str:
    """A fresh rollout id (``ro-`` and 64 random bits in hex)."""
    return f"ro-{random.getrandbits(64):016x}"
