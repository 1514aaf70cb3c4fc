"""The validation layer: one set of rules, checked in Python and rendered as ClickHouse constraints."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from agentstream.schemas import load_schema
from agentstream.schemas.serde import AvroSchema, resolution_problem
from agentstream.schemas.validation import (
    MAX_TIME_US,
    MIN_TIME_US,
    RULES,
    InvalidRecordError,
    clickhouse_constraints,
    validate,
)
from agentstream.sinks.batch import SINK_TABLES
from agentstream.sinks.migrations import desired_constraints
from agentstream.topics import dead_letter
from agentstream.topics.catalogue import HEADER_DLQ_REASON, HEADER_DLQ_REFERENCE, HEADER_DLQ_SOURCE


def reward(**overrides: Any) -> dict[str, Any]:
    datum: dict[str, Any] = {"value": 1.0, "timestamp": 1_700_000_000_000_000}
    return datum | overrides


def span(**overrides: Any) -> dict[str, Any]:
    datum: dict[str, Any] = {
        "start_time": 1_700_000_000_000_000,
        "end_time": 1_700_000_000_500_000,
        "events": [{"name": "e", "time": 1_700_000_000_100_000, "attributes": {}}],
        "float_attributes": {"temperature": 0.7},
        "response_logprobs": [-0.1, -2.5, -math.inf],
    }
    return datum | overrides


def test_valid_records_pass() -> None:
    validate("reward", reward())
    validate("span", span())
    validate("span", span(events=[], float_attributes={}, response_logprobs=[]))
    validate("task", {"anything": math.nan})  # no rules: nothing the sink stores


@pytest.mark.parametrize(
    ("stem", "datum", "field"),
    [
        ("reward", reward(value=math.nan), "value"),
        ("reward", reward(value=math.inf), "value"),
        ("reward", reward(value=-math.inf), "value"),
        ("reward", reward(timestamp=MAX_TIME_US), "timestamp"),
        ("reward", reward(timestamp=MIN_TIME_US - 1), "timestamp"),
        ("reward", reward(timestamp=3_093_527_980_800_000_000), "timestamp"),  # year 100000
        ("span", span(end_time=MAX_TIME_US + 1), "end_time"),
        ("span", span(events=[{"name": "e", "time": -5, "attributes": {}}]), "events[].time"),
        ("span", span(float_attributes={"a": 1.0, "b": math.inf}), "float_attributes"),
        ("span", span(float_attributes={"a": 1e308, "b": math.nan}), "float_attributes"),
        ("span", span(response_logprobs=[-0.1, math.nan]), "response_logprobs"),
        ("triplet", {"reward": math.nan, "created_at": 0, "emitted_at": 0}, "reward"),
        ("rollout_state", {"created_at": 0, "updated_at": 0, "reward_sum": math.inf}, "reward_sum"),
        (
            "rollout_state",
            {"created_at": 0, "updated_at": 0, "attempts": [{"started_at": None, "ended_at": MAX_TIME_US}]},
            "attempts[].ended_at",
        ),
    ],
)
def test_invalid_records_name_field_and_rule(stem: str, datum: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRecordError) as caught:
        validate(stem, datum)
    assert caught.value.field == field
    assert field in str(caught.value) and caught.value.rule in str(caught.value)


def test_overflowing_sum_of_finite_values_is_valid() -> None:
    validate("span", span(float_attributes={"a": 1e308, "b": 1e308}))


def test_nullable_fields_may_be_null_and_datetimes_are_read() -> None:
    validate("triplet", {"reward": None, "created_at": 0, "emitted_at": 0})
    validate("reward", reward(timestamp=datetime(2024, 1, 1, tzinfo=UTC)))
    with pytest.raises(InvalidRecordError):
        validate("reward", reward(timestamp=datetime(2300, 1, 1, tzinfo=UTC)))


def test_every_rule_has_both_renderings_and_names_a_real_field() -> None:
    for stem, record_rules in RULES.items():
        fields = {f["name"] for f in load_schema(stem).definition["fields"]}
        constraints = clickhouse_constraints(stem)
        assert len(constraints) == len(record_rules.rules)
        for rule in record_rules.rules:
            assert rule.field in fields, (stem, rule)
            assert rule.description
            assert rule.field in constraints[rule.name]


def test_every_table_of_the_sink_has_its_rules_as_constraints() -> None:
    stems = {t.topic.value_schema for t in SINK_TABLES if t.topic.value_schema}
    assert stems == set(RULES)
    wanted = desired_constraints()
    for sink_table in SINK_TABLES:
        if sink_table.topic.value_schema:
            names = {name.rsplit("_", 1)[0] for name in wanted[sink_table.table]}
            assert names == {r.name for r in RULES[sink_table.topic.value_schema].rules}


def test_rule_coverage_of_floats_and_times() -> None:
    """Every top-level double or timestamp of a stored record type has a rule, except the fields no
    table keeps (which no component checks either)."""
    unchecked = {
        ("rollout_state", "reward_sum_squares"),
        ("rollout_state", "last_reward_at"),
        ("promotion_decision", "difference"),
        ("promotion_decision", "statistic"),
        ("promotion_decision", "p_value"),
    }
    for stem, record_rules in RULES.items():
        covered = {r.field for r in record_rules.rules}
        for field in load_schema(stem).definition["fields"]:
            kinds = field["type"] if isinstance(field["type"], list) else [field["type"]]
            for kind in kinds:
                is_time = isinstance(kind, dict) and kind.get("logicalType") == "timestamp-micros"
                if (kind == "double" or is_time) and (stem, field["name"]) not in unchecked:
                    assert field["name"] in covered, (stem, field["name"])


# ---- schema resolution -----------------------------------------------------------------------------
def _without(stem: str, field: str, keep_default: bool) -> AvroSchema:
    definition = dict(load_schema(stem).definition)
    definition["fields"] = [f for f in definition["fields"] if f["name"] != field]
    return AvroSchema.from_definition(definition)


def test_resolution_problem() -> None:
    span_schema, reward_schema = load_schema("span"), load_schema("reward")
    assert resolution_problem(span_schema, span_schema) is None
    assert "Span" in (resolution_problem(span_schema, reward_schema) or "")
    # a writer lacking a field without default cannot be read; lacking one with a default can
    required = next(f["name"] for f in reward_schema.definition["fields"] if "default" not in f)
    assert required in (resolution_problem(_without("reward", required, False), reward_schema) or "")
    optional = next(f["name"] for f in reward_schema.definition["fields"] if "default" in f)
    assert resolution_problem(_without("reward", optional, True), reward_schema) is None
    # and the reader ignores fields it does not know
    assert resolution_problem(reward_schema, _without("reward", required, False)) is None


# ---- dead letters ----------------------------------------------------------------------------------
def test_dead_letter_copies_small_records_and_references_big_ones() -> None:
    source = dead_letter.Source("t.spans", 3, 17)
    small = dead_letter.build(
        source=source,
        key=b"k",
        value=b"v" * 10,
        headers=[("h", b"1")],
        reason="bad",
        error_class="E",
        consumer="c",
    )
    headers = dict(small.headers)
    assert not small.reference and small.value == b"v" * 10
    assert headers[HEADER_DLQ_REASON] == b"bad" and headers[HEADER_DLQ_SOURCE] == b"t.spans/3/17"
    value = b"x" * 2_000_000
    big = dead_letter.build(
        source=source, key=b"k", value=value, headers=[], reason="bad", error_class="E", consumer="c"
    )
    assert big.reference and dict(big.headers)[HEADER_DLQ_REFERENCE] == b"1"
    import hashlib
    import json

    body = json.loads(big.value or b"")
    assert body == {
        "reference": True,
        "topic": "t.spans",
        "partition": 3,
        "offset": 17,
        "size": len(value),
        "sha256": hashlib.sha256(value).hexdigest(),
        "reason": "bad",
    }
