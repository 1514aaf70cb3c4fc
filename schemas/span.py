"""``Span``: one finished unit of agent work, OpenTelemetry-shaped (schema: ``span.avsc``)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from .record import AvroRecord, TimestampMicros

#: An OTel attribute value; arrays are kept as arrays of strings.
AttributeValue = StrictBool | StrictInt | StrictFloat | StrictStr | list[StrictStr]


class SpanKind(StrEnum):
    LLM = "llm"
    TOOL = "tool"
    REWARD = "reward"
    AGENT = "agent"
    OTHER = "other"


class StatusCode(StrEnum):
    UNSET = "unset"
    OK = "ok"
    ERROR = "error"


class SpanEvent(BaseModel):
    """A timestamped annotation inside a span (e.g. an OTel ``exception`` event)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    time: TimestampMicros
    attributes: dict[str, str] = Field(default_factory=dict)


class Span(AvroRecord):
    """A finished span. ``attributes`` holds every attribute; on the wire they split by type."""

    avro_stem = "span"

    trace_id: str = Field(min_length=1)
    span_id: str = Field(min_length=1)
    parent_span_id: str | None = None
    rollout_id: str
    attempt_id: str = ""
    sequence_id: int = 0
    name: str
    kind: SpanKind = SpanKind.OTHER
    start_time: TimestampMicros
    end_time: TimestampMicros
    status: StatusCode = StatusCode.UNSET
    error: str | None = None
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    events: list[SpanEvent] = Field(default_factory=list)
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    resource_name: str = ""
    resource_version: str = ""
    #: one per response token, from the serving engine (float32 on the wire)
    response_logprobs: list[float] = Field(default_factory=list)
    prompt_token_ids: list[int] = Field(default_factory=list)
    response_token_ids: list[int] = Field(default_factory=list)

    @property
    def duration_us(self) -> int:
        return self.end_time - self.start_time

    def to_avro(self) -> dict[str, Any]:
        record = self.model_dump(mode="python", exclude={"attributes"})
        record.update(split_attributes(self.attributes))
        return record

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> Self:
        data = dict(record)
        data["attributes"] = merge_attributes(
            data.pop("attributes", {}),
            data.pop("int_attributes", {}),
            data.pop("float_attributes", {}),
            data.pop("bool_attributes", {}),
            data.pop("array_attributes", {}),
        )
        return cls.model_validate(data)


def split_attributes(attributes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Spread attributes over the typed Avro maps (``attributes``, ``int_attributes``, ...)."""
    strings: dict[str, str] = {}
    ints: dict[str, int] = {}
    floats: dict[str, float] = {}
    bools: dict[str, bool] = {}
    arrays: dict[str, list[str]] = {}
    for key, value in attributes.items():
        if isinstance(value, bool):
            bools[key] = value
        elif isinstance(value, int):
            ints[key] = value
        elif isinstance(value, float):
            floats[key] = value
        elif isinstance(value, str):
            strings[key] = value
        elif isinstance(value, (list, tuple)):
            arrays[key] = [v if isinstance(v, str) else str(v) for v in value]
        else:
            strings[key] = str(value)
    return {
        "attributes": strings,
        "int_attributes": ints,
        "float_attributes": floats,
        "bool_attributes": bools,
        "array_attributes": arrays,
    }


def merge_attributes(
    strings: dict[str, str],
    ints: dict[str, int],
    floats: dict[str, float],
    bools: dict[str, bool],
    arrays: dict[str, list[str]],
) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in (strings, ints, floats, bools, arrays):
        merged.update(part)
    return merged
