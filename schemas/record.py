"""Base of the pydantic event models: each mirrors one ``.avsc`` file beside it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict

from .avro import AvroSchema, load_schema

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(value: Any) -> Any:
    """Accept µs since the epoch or a datetime (what fastavro returns for timestamp-micros)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return value


#: Microseconds since the Unix epoch (Avro ``timestamp-micros``).
TimestampMicros = Annotated[int, BeforeValidator(to_micros)]


class AvroRecord(BaseModel):
    """A pydantic model whose fields match an Avro schema file of the same stem."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    avro_stem: ClassVar[str]

    @classmethod
    def avro_schema(cls) -> AvroSchema:
        return load_schema(cls.avro_stem)

    def to_avro(self) -> dict[str, Any]:
        """The Avro datum for this model (fastavro accepts StrEnum members as symbols)."""
        return self.model_dump(mode="python")

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> Self:
        """Build the model from a decoded Avro datum."""
        return cls.model_validate(record)
