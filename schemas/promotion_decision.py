"""``PromotionDecision``: what the A/B promotion policy decided about a candidate, with its
evidence (schema: ``promotion_decision.avsc``)."""

from __future__ import annotations

from enum import StrEnum

from .record import AvroRecord, TimestampMicros


class PromotionAction(StrEnum):
    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"


class PromotionDecision(AvroRecord):
    avro_stem = "promotion_decision"

    decision_id: str
    resource_name: str
    action: PromotionAction
    candidate_version: int
    production_version: int
    metric: str
    test: str
    candidate_n: int
    candidate_successes: int
    production_n: int
    production_successes: int
    difference: float | None = None
    statistic: float | None = None
    p_value: float | None = None
    margin: float
    alpha: float
    min_samples: int
    evidence_since: TimestampMicros
    reason: str = ""
    decided_at: TimestampMicros
