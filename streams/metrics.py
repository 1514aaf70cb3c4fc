"""Per-version metrics, pre-aggregated per source partition.

Rollouts are keyed by rollout id, metrics by resource version: instead of repartitioning every event
by version, each worker aggregates the rollouts of its own partitions into *partials* keyed by
(resource, version, window, partition, mode) and emits each partial with a growing ``revision``. A
reader keeps the highest revision of every partial and sums the partials of a window (the ClickHouse
view does exactly that). Re-emitting a partial is idempotent, so redelivery and restarts cannot double
count.

The rollout's mode is part of the key so that readers can count traffic (``train``, ``prod``) apart
from pinned evaluation rollouts (``val``, ``test``), which must not weigh in an A/B test. Keys written
before modes were counted apart have four parts and read back with mode ``""``.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from agentstream.schemas import LATENCY_BUCKETS_MS, RolloutState, RolloutStatus, VersionMetrics

from .lifecycle import attempt_latency_ms

SEP = "\x1f"
#: a partial's key for the ids of the rollouts a recount counted (see :class:`.archive.MetricsRecount`)
RECOUNTED = "recounted"


def window_of(timestamp_us: int, window_seconds: float) -> tuple[int, int]:
    size = int(window_seconds * 1_000_000)
    start = timestamp_us - timestamp_us % size
    return start, start + size


def partial_key(
    resource_name: str, resource_version: str, window_start: int, partition: int, mode: str = ""
) -> str:
    """The table key of a partial; without a mode, the four-part key of before modes were counted."""
    parts = (resource_name, resource_version, str(window_start), str(partition))
    return SEP.join((*parts, mode) if mode else parts)


def parse_key(key: str) -> tuple[str, str, int, int, str]:
    """(resource, version, window_start, partition, mode) of a :func:`partial_key`."""
    name, version, start, partition, *mode = key.split(SEP)
    return name, version, int(start), int(partition), mode[0] if mode else ""


def rollout_versions(state: RolloutState) -> list[tuple[str, str]]:
    """The (resource, version) pairs a rollout's outcome counts for; ("", "") when it used none."""
    attempt = state.current
    resources = (attempt.resources if attempt is not None and attempt.resources else None) or state.resources
    return sorted(resources.items()) or [("", "")]


def empty_partial(window_end: int) -> dict[str, Any]:
    return {
        "window_end": window_end,
        "revision": 0,
        "rollouts": 0,
        "succeeded": 0,
        "failed": 0,
        "rewards": 0,
        "reward_sum": 0.0,
        "reward_sum_squares": 0.0,
        "latency_ms_sum": 0.0,
        "latency_ms_max": 0.0,
        "latency_ms_histogram": [0] * (len(LATENCY_BUCKETS_MS) + 1),
        "llm_calls": 0,
        "input_tokens": 0,
        "output_tokens": 0,
    }


def add_outcome(partial: dict[str, Any], state: RolloutState) -> None:
    """Count a rollout that just ended, with the rewards it received so far."""
    partial["rollouts"] += 1
    if state.status == RolloutStatus.SUCCEEDED:
        partial["succeeded"] += 1
    elif state.status == RolloutStatus.FAILED:
        partial["failed"] += 1
    latency = attempt_latency_ms(state)
    if not math.isnan(latency):
        partial["latency_ms_sum"] += latency
        partial["latency_ms_max"] = max(partial["latency_ms_max"], latency)
        partial["latency_ms_histogram"][bisect.bisect_left(LATENCY_BUCKETS_MS, latency)] += 1
    partial["rewards"] += state.reward_count
    partial["reward_sum"] += state.reward_sum
    partial["reward_sum_squares"] += state.reward_sum_squares
    partial["llm_calls"] += state.llm_calls
    partial["input_tokens"] += state.input_tokens
    partial["output_tokens"] += state.output_tokens
    partial["revision"] += 1


def add_reward(partial: dict[str, Any], value: float) -> None:
    """Count a reward that arrived after its rollout ended (a delayed business outcome, a rating)."""
    partial["rewards"] += 1
    partial["reward_sum"] += value
    partial["reward_sum_squares"] += value * value
    partial["revision"] += 1


def to_record(key: str, partial: dict[str, Any], emitted_at_us: int) -> VersionMetrics:
    name, version, start, partition, mode = parse_key(key)
    fields = {k: v for k, v in partial.items() if k not in ("window_end", RECOUNTED)}
    return VersionMetrics(
        resource_name=name,
        resource_version=version,
        window_start=start,
        window_end=partial["window_end"],
        source_partition=partition,
        mode=mode,
        emitted_at=emitted_at_us,
        **fields,
    )
