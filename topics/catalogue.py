"""The topic catalogue: every Kafka topic agentstream uses, with its key, value and cleanup policy.

Per-rollout event topics are keyed by ``rollout_id`` and share one partition count, so that stream
processors can join them partition by partition (co-partitioning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One topic. ``name`` is the suffix after the configured prefix (default ``agentstream.``)."""

    name: str
    key: str
    #: schema stem of the value (see ``SCHEMA_FILES``), or ``None`` for raw bytes
    value_schema: str | None
    cleanup_policy: Literal["delete", "compact"]
    retention_ms: int | None
    description: str
    #: ``None``: the configured event partition count; else a fixed count
    partitions: int | None = None

    def config(self) -> dict[str, str]:
        config: dict[str, str] = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        return config

    def partition_count(self, event_partitions: int) -> int:
        return self.partitions if self.partitions is not None else event_partitions


SPANS = TopicSpec(
    "spans",
    "rollout_id",
    "span",
    "delete",
    7 * DAY_MS,
    "Finished spans of agents (LLM calls, tool calls, steps).",
)
REWARDS = TopicSpec(
    "rewards",
    "rollout_id",
    "reward",
    "delete",
    30 * DAY_MS,
    "Rewards: rules, humans, business events, judges.",
)
ROLLOUT_EVENTS = TopicSpec(
    "rollout-events", "rollout_id", "rollout_event", "delete", 30 * DAY_MS, "Rollout and attempt lifecycle."
)
TRIPLETS = TopicSpec(
    "triplets",
    "rollout_id",
    "triplet",
    "delete",
    30 * DAY_MS,
    "Prompt/response/reward triplets for trainers.",
)
TASKS = TopicSpec(
    "tasks",
    "rollout_id",
    "task",
    "delete",
    7 * DAY_MS,
    "The work queue: attempt N of a rollout, written only by the lifecycle processor; runners consume it as a group.",
)
ROLLOUT_STATE = TopicSpec(
    "rollout-state",
    "rollout_id",
    "rollout_state",
    "compact",
    None,
    "Current state of every rollout; the changelog of the lifecycle processor's table.",
)
METRICS = TopicSpec(
    "metrics",
    "resource_name/version/window_start/source_partition",
    "version_metrics",
    "compact",
    None,
    "Per-version windowed outcomes, pre-aggregated per source partition (sum the partials of a window).",
)
RESOURCES = TopicSpec(
    "resources",
    "resource_name/version",
    "resource_version",
    "compact",
    None,
    "Immutable resource versions (prompt templates, models) that runners subscribe to.",
    partitions=1,
)
RESOURCE_LABELS = TopicSpec(
    "resource-labels",
    "resource_name/label",
    "resource_label",
    "compact",
    None,
    "Where each label (production, candidate, custom) of a resource points; moved by appending events.",
    partitions=1,
)
DECISIONS = TopicSpec(
    "decisions",
    "resource_name",
    "promotion_decision",
    "delete",
    365 * DAY_MS,
    "Promotion-policy decisions (promote, hold, rollback) with their evidence.",
    partitions=1,
)
DEAD_LETTER = TopicSpec(
    "dead-letter",
    "original key",
    None,
    "delete",
    30 * DAY_MS,
    "Records no consumer could process, with the reason and source coordinates in headers.",
    partitions=1,
)
SCHEMAS = TopicSpec(
    "schemas",
    "fingerprint (hex)",
    None,
    "compact",
    None,
    "Writer schemas by fingerprint, so single-object-encoded records stay readable as schemas evolve.",
    partitions=1,
)

CATALOGUE: tuple[TopicSpec, ...] = (
    SPANS,
    REWARDS,
    ROLLOUT_EVENTS,
    TRIPLETS,
    TASKS,
    ROLLOUT_STATE,
    METRICS,
    RESOURCES,
    RESOURCE_LABELS,
    DECISIONS,
    DEAD_LETTER,
    SCHEMAS,
)

#: Stream-worker tables whose changelog is a Faust-named internal topic (``rollouts`` writes to
#: ROLLOUT_STATE instead).
INTERNAL_TABLES = ("joins", "metric-partials")


def changelog_topics(app_id: str) -> tuple[TopicSpec, ...]:
    """The internal changelog topics of the stream workers' tables (compacted, partitioned like the
    sources). They must exist before anything writes to them: a first write would let the broker
    auto-create them with its default partition count, which Faust then refuses."""
    return tuple(
        TopicSpec(
            f"{app_id}-{name}-changelog",
            "table key",
            None,
            "compact",
            None,
            f"Changelog of the stream workers' {name} table.",
        )
        for name in INTERNAL_TABLES
    )


#: Header names agentstream sets on records.
HEADER_EVENT_ID = "agentstream-id"
HEADER_REPLAY = "agentstream-replay"
HEADER_DLQ_REASON = "agentstream-dlq-reason"
HEADER_DLQ_ERROR_CLASS = "agentstream-dlq-error-class"
HEADER_DLQ_SOURCE = "agentstream-dlq-source"
HEADER_DLQ_CONSUMER = "agentstream-dlq-consumer"
#: "1" on a dead letter whose value is a JSON reference to its source record (too big to copy)
HEADER_DLQ_REFERENCE = "agentstream-dlq-reference"
#: on a record re-driven from the dead-letter topic: the dead letter (``topic/partition/offset``) it came from
HEADER_DLQ_REPLAY_OF = "agentstream-dlq-replay-of"
