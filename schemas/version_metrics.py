"""``VersionMetrics``: rollout outcomes per resource version and time window
(schema: ``version_metrics.avsc``)."""

from __future__ import annotations

import math

from pydantic import Field

from .record import AvroRecord, TimestampMicros

#: The rollout modes that are A/B traffic, split between a resource's ``production`` and
#: ``candidate`` labels; pinned evaluation rollouts run as ``val`` or ``test``.
TRAFFIC_MODES: tuple[str, ...] = ("train", "prod")

#: Upper bounds (ms) of the latency histogram buckets; the last bucket counts everything above.
LATENCY_BUCKETS_MS = (10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000)


class VersionMetrics(AvroRecord):
    avro_stem = "version_metrics"

    resource_name: str
    resource_version: str
    window_start: TimestampMicros
    window_end: TimestampMicros
    source_partition: int = 0
    #: the rollouts' mode (train, prod, val, test); "" in partials from before modes were counted apart
    mode: str = ""
    revision: int = 0
    rollouts: int = 0
    succeeded: int = 0
    failed: int = 0
    rewards: int = 0
    reward_sum: float = 0.0
    reward_sum_squares: float = 0.0
    latency_ms_sum: float = 0.0
    latency_ms_max: float = 0.0
    latency_ms_histogram: list[int] = Field(default_factory=list)
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    emitted_at: TimestampMicros

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.rollouts if self.rollouts else None

    @property
    def reward_mean(self) -> float | None:
        return self.reward_sum / self.rewards if self.rewards else None

    @property
    def reward_std(self) -> float | None:
        if self.rewards < 2:
            return None
        mean = self.reward_sum / self.rewards
        return math.sqrt(
            max(self.reward_sum_squares / self.rewards - mean * mean, 0.0) * self.rewards / (self.rewards - 1)
        )
