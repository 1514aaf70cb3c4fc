"""``Reward``: a scalar judgement of a rollout, a span or an LLM response (schema: ``reward.avsc``)."""

from __future__ import annotations

import math
from enum import StrEnum

from pydantic import Field, field_validator

from .record import AvroRecord, TimestampMicros


class RewardSource(StrEnum):
    RULE = "rule"
    HUMAN = "human"
    BUSINESS_EVENT = "business_event"
    JUDGE = "judge"


#: Attribute of a reward (or span) that says the rollout was handed off; its value says to whom.
HANDOFF_ATTRIBUTE = "agentstream.handoff"


class Reward(AvroRecord):
    """A reward targets a rollout and optionally one span (``span_id``) or response (``response_id``)."""

    avro_stem = "reward"

    reward_id: str = Field(min_length=1)
    rollout_id: str = Field(min_length=1)
    attempt_id: str = ""
    span_id: str | None = None
    response_id: str | None = None
    trace_id: str | None = None
    parent_span_id: str | None = None
    sequence_id: int = 0
    name: str = "reward"
    value: float
    feedback: str | None = None
    source: RewardSource = RewardSource.RULE
    timestamp: TimestampMicros
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"reward value must be finite, got {value!r}")
        return value
