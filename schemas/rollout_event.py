"""``RolloutEvent``: one step of a rollout's lifecycle (schema: ``rollout_event.avsc``); the
``RolloutConfig`` it carries on ``task_enqueued``; the statuses of rollouts and attempts."""

from __future__ import annotations

from enum import StrEnum
from typing import cast

from pydantic import BaseModel, ConfigDict, Field

from .record import AvroRecord, TimestampMicros


class RolloutEventType(StrEnum):
    TASK_ENQUEUED = "task_enqueued"
    ATTEMPT_STARTED = "attempt_started"
    HEARTBEAT = "heartbeat"
    ATTEMPT_FINISHED = "attempt_finished"
    #: what readers see for a type added by a newer writer
    UNKNOWN = "unknown"
    ATTEMPT_TIMEOUT = "attempt_timeout"
    ATTEMPT_UNRESPONSIVE = "attempt_unresponsive"
    #: a runner shutting down gives an unfinished attempt back to the queue
    ATTEMPT_RELEASED = "attempt_released"
    CANCEL_REQUESTED = "cancel_requested"


class RolloutStatus(StrEnum):
    QUEUING = "queuing"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUING = "requeuing"


class AttemptStatus(StrEnum):
    PREPARING = "preparing"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    UNRESPONSIVE = "unresponsive"


TERMINAL_ROLLOUT = frozenset({RolloutStatus.SUCCEEDED, RolloutStatus.FAILED, RolloutStatus.CANCELLED})
TERMINAL_ATTEMPT = frozenset(
    {AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.TIMEOUT, AttemptStatus.UNRESPONSIVE}
)


class CreditAssignment(StrEnum):
    #: a reward goes to the latest unassigned LLM call that ended before it
    FIRST_OCCURRENCE = "first_occurrence"
    #: the final reward goes to every LLM call of the attempt
    FINAL_BROADCAST = "final_broadcast"
    #: the final reward, discounted by gamma per turn counted back from the last call
    DISCOUNTED = "discounted"


class RolloutConfig(BaseModel):
    """How a rollout is retried and watched (Avro record ``io.agentstream.RolloutConfig``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(1, ge=1)
    retry_condition: list[AttemptStatus] = Field(
        default_factory=lambda: [AttemptStatus.FAILED, AttemptStatus.TIMEOUT, AttemptStatus.UNRESPONSIVE]
    )
    timeout_seconds: float | None = Field(None, gt=0)
    unresponsive_seconds: float | None = Field(None, gt=0)
    credit_assignment: CreditAssignment | None = None
    discount: float | None = Field(None, gt=0, le=1)

    def to_avro(self) -> dict[str, object]:
        data = self.model_dump(mode="json")
        data["credit_assignment"] = data["credit_assignment"] or ""
        return data

    @classmethod
    def from_avro(cls, record: dict[str, object] | None) -> RolloutConfig:
        if not record:
            return cls()
        data = dict(record)
        data["credit_assignment"] = data.get("credit_assignment") or None
        return cls.model_validate(data)


def attempt_id_for(rollout_id: str, attempt_number: int) -> str:
    """The deterministic id of attempt ``attempt_number`` of a rollout: a re-sent task or a
    re-processed event always names the same attempt."""
    return f"{rollout_id}#{attempt_number}"


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
    task_type: str = ""
    mode: str = ""
    config: RolloutConfig | None = None
    started_at: TimestampMicros | None = None
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def to_avro(self) -> dict[str, object]:
        data = self.model_dump(mode="python", exclude={"config"})
        data["config"] = self.config.to_avro() if self.config is not None else None
        return data

    @classmethod
    def from_avro(cls, record: dict[str, object]) -> RolloutEvent:
        data = dict(record)
        config = data.get("config")
        if config is not None:
            data["config"] = RolloutConfig.from_avro(cast(dict[str, object], config))  # a decoded record
        return cls.model_validate(data)
