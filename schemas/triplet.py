"""``Triplet``: trainable prompt / response / reward of one LLM call (schema: ``triplet.avsc``)."""

from __future__ import annotations

from pydantic import Field

from .record import AvroRecord, TimestampMicros


class Triplet(AvroRecord):
    avro_stem = "triplet"

    triplet_id: str = Field(min_length=1)
    version: int = 1
    rollout_id: str
    attempt_id: str = ""
    span_id: str
    step: int = 0
    prompt_messages: str
    prompt_token_ids: list[int] = Field(default_factory=list)
    response: str
    response_token_ids: list[int] = Field(default_factory=list)
    #: sampling log-probability of each response token (float32 on the wire); empty when unknown
    response_logprobs: list[float] = Field(default_factory=list)
    #: the primary reward dimension's credited value (see :mod:`agentstream.streams.credit`); ``None``
    #: until credit arrives, and on a retraction
    reward: float | None = None
    #: credited value per reward dimension (reward name)
    reward_dimensions: dict[str, float] = Field(default_factory=dict)
    #: this version withdraws the triplet (a judge call, a duplicate, or credit lost): never training data
    retracted: bool = False
    feedback: str | None = None
    credit_assignment: str = ""
    resource_name: str = ""
    resource_version: str = ""
    mode: str = ""
    task_type: str = ""
    model: str = ""
    created_at: TimestampMicros
    emitted_at: TimestampMicros
