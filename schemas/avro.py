"""Avro schemas of the event contracts: loading, canonical form and fingerprints."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import to_parsing_canonical_form

#: Schema file stem -> record name, for every contract shipped with agentstream.
SCHEMA_FILES = {
    "span": "io.agentstream.Span",
    "reward": "io.agentstream.Reward",
    "rollout_event": "io.agentstream.RolloutEvent",
    "triplet": "io.agentstream.Triplet",
    "resource_version": "io.agentstream.ResourceVersion",
    "task": "io.agentstream.Task",
    "rollout_state": "io.agentstream.RolloutState",
    "version_metrics": "io.agentstream.VersionMetrics",
    "resource_label": "io.agentstream.ResourceLabel",
    "promotion_decision": "io.agentstream.PromotionDecision",
}


@dataclass(frozen=True, eq=False)
class AvroSchema:
    """One Avro record schema with what serialization needs precomputed.

    Two schemas are equal when their fingerprints (of the Parsing Canonical Form) are.
    """

    definition: dict[str, Any]
    parsed: Any = field(repr=False)
    canonical: str = field(repr=False)
    #: CRC-64-AVRO of the Parsing Canonical Form, little-endian: the single-object-encoding header.
    fingerprint: bytes = field(repr=False)

    @classmethod
    def from_definition(cls, definition: dict[str, Any] | str) -> AvroSchema:
        if isinstance(definition, str):
            definition = json.loads(definition)
        assert isinstance(definition, dict)
        parsed = parse_schema(definition)
        canonical = to_parsing_canonical_form(parsed)
        return cls(
            definition=definition,
            parsed=parsed,
            canonical=canonical,
            fingerprint=bytes.fromhex(_fingerprint(canonical, "CRC-64-AVRO")),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AvroSchema) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    @property
    def name(self) -> str:
        """Full record name, e.g. ``io.agentstream.Span``."""
        namespace = self.definition.get("namespace")
        name = self.definition["name"]
        return f"{namespace}.{name}" if namespace and "." not in name else name

    @property
    def json(self) -> str:
        """The full definition (with defaults and logical types), as a writer schema for readers."""
        return json.dumps(self.definition, separators=(",", ":"))

    @property
    def field_names(self) -> list[str]:
        return [f["name"] for f in self.definition["fields"]]


@cache
def load_schema(stem: str) -> AvroSchema:
    """The shipped schema ``schemas/<stem>.avsc``, e.g. ``load_schema("span")``."""
    if stem not in SCHEMA_FILES:
        raise ValueError(f"unknown schema {stem!r}; known: {sorted(SCHEMA_FILES)}")
    text = resources.files(__package__).joinpath(f"{stem}.avsc").read_text()
    return AvroSchema.from_definition(text)


def all_schemas() -> list[AvroSchema]:
    return [load_schema(stem) for stem in SCHEMA_FILES]
