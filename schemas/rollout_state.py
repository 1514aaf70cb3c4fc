"""``RolloutState``: the current state of a rollout and its attempts (schema: ``rollout_state.avsc``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .record import AvroRecord, TimestampMicros
from .rollout_event import AttemptStatus, RolloutConfig, RolloutStatus


class AttemptState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempt_number: int
    attempt_id: str = ""
    status: AttemptStatus
    worker_id: str = ""
    started_at: TimestampMicros | None = None
    ended_at: TimestampMicros | None = None
    last_heartbeat: TimestampMicros | None = None
    error: str | None = None
    resources: dict[str, str] = Field(default_factory=dict)


class RolloutState(AvroRecord):
    """Not frozen: the lifecycle processor updates it in place before writing it back."""

    model_config = ConfigDict(extra="forbid", frozen=False)
    avro_stem = "rollout_state"

    rollout_id: str
    status: RolloutStatus
    version: int = 0
    input: str = "null"
    task_type: str = ""
    mode: str = "train"
    config: RolloutConfig = Field(default_factory=RolloutConfig)
    resources: dict[str, str] = Field(default_factory=dict)
    attempts: list[AttemptState] = Field(default_factory=list)
    created_at: TimestampMicros
    updated_at: TimestampMicros
    ended_at: TimestampMicros | None = None
    error: str | None = None
    last_event_id: str = ""
    seen_event_ids: list[str] = Field(default_factory=list)
    reward_count: int = 0
    reward_sum: float = 0.0
    reward_sum_squares: float = 0.0
    last_reward: float | None = None
    last_reward_at: TimestampMicros | None = None
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def current(self) -> AttemptState | None:
        return self.attempts[-1] if self.attempts else None

    def attempt(self, number: int) -> AttemptState | None:
        for attempt in self.attempts:
            if attempt.attempt_number == number:
                return attempt
        return None

    def to_avro(self) -> dict[str, Any]:
        data = self.model_dump(mode="python", exclude={"config"})
        data["config"] = self.config.to_avro()
        return data

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> RolloutState:
        return cls.model_validate({**record, "config": RolloutConfig.from_avro(record.get("config"))})
