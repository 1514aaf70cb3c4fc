"""The event contracts: Avro schemas (one ``.avsc`` per event), matching pydantic models, the
serializers, and the topic catalogue. This package imports nothing else of agentstream's."""

from .avro import SCHEMA_FILES, AvroSchema, all_schemas, load_schema
from .resource_version import ResourceKind, ResourceVersion
from .reward import Reward, RewardSource
from .rollout_event import AttemptStatus, RolloutEvent, RolloutEventType
from .serde import (
    AvroDeserializer,
    AvroSerializer,
    Framing,
    MalformedRecordError,
    SchemaStore,
    SerializationError,
    UnknownSchemaError,
    read_framing,
)
from .span import AttributeValue, Span, SpanEvent, SpanKind, StatusCode
from .topics import CATALOGUE, TopicSpec
from .triplet import Triplet

#: Model class per schema stem.
MODELS = {
    "span": Span,
    "reward": Reward,
    "rollout_event": RolloutEvent,
    "triplet": Triplet,
    "resource_version": ResourceVersion,
}

__all__ = [
    "AttemptStatus",
    "AttributeValue",
    "AvroDeserializer",
    "AvroSchema",
    "AvroSerializer",
    "CATALOGUE",
    "Framing",
    "MODELS",
    "MalformedRecordError",
    "ResourceKind",
    "ResourceVersion",
    "Reward",
    "RewardSource",
    "RolloutEvent",
    "RolloutEventType",
    "SCHEMA_FILES",
    "SchemaStore",
    "SerializationError",
    "Span",
    "SpanEvent",
    "SpanKind",
    "StatusCode",
    "TopicSpec",
    "Triplet",
    "UnknownSchemaError",
    "all_schemas",
    "load_schema",
    "read_framing",
]
