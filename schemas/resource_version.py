"""``ResourceVersion``: an immutable version of a prompt template, LLM or checkpoint
(schema: ``resource_version.avsc``)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .record import AvroRecord, TimestampMicros


class ResourceKind(StrEnum):
    PROMPT_TEMPLATE = "prompt_template"
    LLM = "llm"
    MODEL_CHECKPOINT = "model_checkpoint"
    OTHER = "other"


class ResourceVersion(AvroRecord):
    avro_stem = "resource_version"

    resource_name: str = Field(min_length=1)
    version: int = Field(ge=1)
    kind: ResourceKind
    template: str | None = None
    variables: list[str] = Field(default_factory=list)
    uri: str | None = None
    config: dict[str, str] = Field(default_factory=dict)
    parent_version: int | None = None
    lineage: dict[str, str] = Field(default_factory=dict)
    content_hash: str = ""
    created_at: TimestampMicros
    created_by: str = ""
