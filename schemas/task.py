"""``Task``: a work item on the task topic, run attempt N of a rollout (schema: ``task.avsc``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .record import AvroRecord, TimestampMicros
from .rollout_event import RolloutConfig


class Task(AvroRecord):
    avro_stem = "task"

    rollout_id: str = Field(min_length=1)
    attempt_number: int = Field(ge=1)
    input: str
    task_type: str = ""
    mode: str = "train"
    config: RolloutConfig = Field(default_factory=RolloutConfig)
    resources: dict[str, str] = Field(default_factory=dict)
    enqueued_at: TimestampMicros
    metadata: dict[str, str] = Field(default_factory=dict)

    def to_avro(self) -> dict[str, Any]:
        data = self.model_dump(mode="python", exclude={"config"})
        data["config"] = self.config.to_avro()
        return data

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> Task:
        return cls.model_validate({**record, "config": RolloutConfig.from_avro(record.get("config"))})
