"""``ResourceLabel``: a label moved to (or removed from) a resource version
(schema: ``resource_label.avsc``)."""

from __future__ import annotations

from pydantic import Field

from .record import AvroRecord, TimestampMicros

PRODUCTION = "production"
CANDIDATE = "candidate"


class ResourceLabel(AvroRecord):
    avro_stem = "resource_label"

    resource_name: str = Field(min_length=1)
    label: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    #: ``None``: the label was removed
    version: int | None = Field(None, ge=1)
    previous_version: int | None = None
    reason: str = ""
    decision_id: str | None = None
    moved_at: TimestampMicros
    moved_by: str = ""
