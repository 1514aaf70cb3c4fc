"""``RolloutEvent``: one step of a rollout's lifecycle (schema: ``rollout_event.avsc``)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .record import AvroRecord, TimestampMicros


class RolloutEventType(StrEnum):
    TASK_ENQUEUED = "task_enqueued"
    ATTEMPT_STARTED = "attempt_started"
    HEARTBEAT = "heartbeat"
    ATTEMPT_FINISHED = "attempt_finished"
    #: what readers see for a type added by a newer writer
    UNKNOWN = "unknown"


class AttemptStatus(StrEnum):
    PREPARING = "preparing"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    UNRESPONSIVE = "unresponsive"


class RolloutEvent(AvroRecord):
    avro_stem = "rollout_event"

    event_id: str = Field(min_length=1)
    rollout_id: str = Field(min_length=1)
    attempt_id: str = ""
    attempt_number: int = 0
    type: RolloutEventType
    status: str = ""
    error: str | None = None
    worker_id: str = ""
    timestamp: TimestampMicros
    task: str | None = None
    resources: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
