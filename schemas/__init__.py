"""The event contracts: Avro schemas (one ``.avsc`` per event), matching pydantic models, the
serializers, and the ids and clock they share. This package imports nothing else of agentstream's."""

from .avro import SCHEMA_FILES, AvroSchema, all_schemas, load_schema
from .ids import new_rollout_id, now_us
from .promotion_decision import PromotionAction, PromotionDecision
from .record import AvroRecord
from .resource_label import CANDIDATE, PRODUCTION, ResourceLabel
from .resource_version import (
    ResourceKind,
    ResourceVersion,
    TemplateError,
    check_template,
    render_template,
    template_variables,
)
from .reward import Reward, RewardSource
from .rollout_event import (
    TERMINAL_ATTEMPT,
    TERMINAL_ROLLOUT,
    AttemptStatus,
    CreditAssignment,
    RolloutConfig,
    RolloutEvent,
    RolloutEventType,
    RolloutStatus,
    attempt_id_for,
)
from .rollout_state import AttemptState, RolloutState
from .serde import (
    AvroDeserializer,
    AvroSerializer,
    Framing,
    IncompatibleSchemaError,
    MalformedRecordError,
    SchemaStore,
    SerializationError,
    UnknownSchemaError,
    read_framing,
)
from .span import AttributeValue, Span, SpanEvent, SpanKind, StatusCode
from .task import Task
from .triplet import Triplet
from .validation import InvalidRecordError, validate
from .version_metrics import LATENCY_BUCKETS_MS, VersionMetrics

#: Model class per schema stem.
MODELS: dict[str, type[AvroRecord]] = {
    "span": Span,
    "reward": Reward,
    "rollout_event": RolloutEvent,
    "triplet": Triplet,
    "resource_version": ResourceVersion,
    "task": Task,
    "rollout_state": RolloutState,
    "version_metrics": VersionMetrics,
    "resource_label": ResourceLabel,
    "promotion_decision": PromotionDecision,
}

__all__ = [
    "new_rollout_id",
    "now_us",
    "CANDIDATE",
    "PRODUCTION",
    "PromotionAction",
    "PromotionDecision",
    "ResourceLabel",
    "TemplateError",
    "check_template",
    "render_template",
    "template_variables",
    "LATENCY_BUCKETS_MS",
    "TERMINAL_ATTEMPT",
    "TERMINAL_ROLLOUT",
    "AttemptState",
    "AttemptStatus",
    "CreditAssignment",
    "RolloutConfig",
    "RolloutState",
    "RolloutStatus",
    "Task",
    "VersionMetrics",
    "AttributeValue",
    "AvroDeserializer",
    "AvroSchema",
    "AvroSerializer",
    "Framing",
    "MODELS",
    "MalformedRecordError",
    "IncompatibleSchemaError",
    "InvalidRecordError",
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
    "Triplet",
    "attempt_id_for",
    "UnknownSchemaError",
    "all_schemas",
    "load_schema",
    "read_framing",
    "validate",
]
