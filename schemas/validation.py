"""What a valid record is, decided in one place for every consumer.

The stream workers decode records in Python and call :func:`validate`; the ClickHouse sink never
decodes records in Python (ClickHouse decodes the Avro), so the same rules are rendered as table
``CHECK`` constraints (:func:`clickhouse_constraints`, applied by the sink's migrations). A rejected
insert is bisected and its faulty records dead-lettered by the sink, as a worker dead-letters a record
:func:`validate` refuses: both components take the same decision for every record.

The rules cover the fields the sink stores (a field no table keeps, such as a rollout event's
``config``, is the business of the hop that reads it). The bounds are fixed, never relative to the
clock, so two components can never disagree about the same record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from .avro import load_schema
from .serde import MalformedRecordError

#: Timestamps must lie in [MIN_TIME_US, MAX_TIME_US): 1970-01-01T00:00:00Z up to 2200-01-01T00:00:00Z.
MIN_TIME_US = 0
MAX_TIME_US = 7_258_118_400_000_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_TEXT = "1970-01-01T00:00:00Z"
_MAX_TEXT = "2200-01-01T00:00:00Z"

Check = Literal["finite", "not_nan", "time_range"]


class InvalidRecordError(MalformedRecordError):
    """A record that decodes but breaks a validation rule; the message names the field and the rule."""

    def __init__(self, record: str, field: str, rule: str, value: Any) -> None:
        super().__init__(f"invalid {record}: {field} {rule} (got {value!r})"[:500])
        self.record = record
        self.field = field
        self.rule = rule


def _micros(value: Any) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta: timedelta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return int(value)


@dataclass(frozen=True)
class Rule:
    """One rule on one field.

    Args:
        field: the record's field (its ClickHouse column has the same name).
        check: ``finite`` (no NaN or ±Inf), ``not_nan`` (±Inf allowed: a log-probability may be
            ``-inf``), ``time_range`` (µs since the epoch within [1970-01-01, 2200-01-01)).
        each: where the values are: the field itself (``None``), the items of an array, or the
            values of a map.
        member: for an array of records, the field of each record that is checked.
    """

    field: str
    check: Check
    each: Literal["array", "map"] | None = None
    member: str | None = None

    @property
    def name(self) -> str:
        """The ClickHouse constraint's name."""
        path = f"{self.field}_{self.member}" if self.member else self.field
        return f"valid_{path}_{self.check}"

    @property
    def description(self) -> str:
        return {
            "finite": "must be a finite number",
            "not_nan": "must not be NaN",
            "time_range": f"must be a time in [{_MIN_TEXT}, {_MAX_TEXT})",
        }[self.check]

    # ---- Python -------------------------------------------------------------------------------------
    def values(self, datum: Mapping[str, Any]) -> Iterable[Any]:
        value = datum.get(self.field)
        if value is None:
            return ()
        if self.each is None:
            return (value,)
        items: Iterable[Any] = value.values() if self.each == "map" else value
        if self.member is not None:
            return [item.get(self.member) for item in items]
        return items

    def violation(self, datum: Mapping[str, Any]) -> Any:
        """The first value of ``datum`` breaking the rule, or ``_OK``."""
        values = self.values(datum)
        if self.check == "time_range":
            for value in values:
                if value is not None and not MIN_TIME_US <= _micros(value) < MAX_TIME_US:
                    return value
            return _OK
        if self.each is not None and self.member is None:
            # One C-level sum instead of a Python call per item: NaN and ±Inf propagate into it.
            values = list(values)
            try:
                total = sum(values)
            except TypeError:
                total = math.nan
            if math.isfinite(total) if self.check == "finite" else total == total:
                return _OK
        for value in values:
            if isinstance(value, float) and (
                not math.isfinite(value) if self.check == "finite" else value != value
            ):
                return value
        return _OK

    # ---- ClickHouse ----------------------------------------------------------------------------------
    def clickhouse(self, nullable: bool) -> str:
        """The ``CHECK`` expression; ``nullable``: the checked values may be NULL."""

        def condition(x: str) -> str:
            if self.check == "finite":
                test = f"isFinite({x})"
            elif self.check == "not_nan":
                test = f"NOT isNaN({x})"
            else:
                micros = f"toUnixTimestamp64Micro({x})"
                test = f"({micros} >= {MIN_TIME_US} AND {micros} < {MAX_TIME_US})"
            return f"(isNull({x}) OR {test.replace(x, f'assumeNotNull({x})')})" if nullable else test

        if self.each is None:
            return condition(self.field)
        column = f"mapValues({self.field})" if self.each == "map" else self.field
        item = f"tupleElement(v, '{self.member}')" if self.member else "v"
        return f"arrayAll(v -> {condition(item)}, {column})"


class _Ok:
    pass


_OK = _Ok()


@dataclass(frozen=True)
class RecordRules:
    """The rules of one record type (schema stem)."""

    stem: str
    rules: tuple[Rule, ...]

    def validate(self, datum: Mapping[str, Any]) -> None:
        for rule in self.rules:
            bad = rule.violation(datum)
            if bad is not _OK:
                path = f"{rule.field}[].{rule.member}" if rule.member else rule.field
                raise InvalidRecordError(self.stem, path, rule.description, bad)

    def constraints(self) -> dict[str, str]:
        """Constraint name -> ``CHECK`` expression, for the table of this record type."""
        fields = {f["name"]: f for f in load_schema(self.stem).definition["fields"]}
        return {rule.name: rule.clickhouse(_nullable(fields[rule.field], rule)) for rule in self.rules}


def _nullable(field: dict[str, Any], rule: Rule) -> bool:
    kind: Any = field["type"]
    if rule.each is not None:
        kind = kind["items"] if rule.each == "array" else kind["values"]
        if rule.member is not None:
            kind = next(f["type"] for f in kind["fields"] if f["name"] == rule.member)
    return isinstance(kind, list) and "null" in kind


def _times(*fields: str) -> tuple[Rule, ...]:
    return tuple(Rule(name, "time_range") for name in fields)


def _finite(*fields: str) -> tuple[Rule, ...]:
    return tuple(Rule(name, "finite") for name in fields)


#: Schema stem -> its rules. Every record type the sink stores has an entry.
RULES: dict[str, RecordRules] = {
    rules.stem: rules
    for rules in (
        RecordRules(
            "span",
            _times("start_time", "end_time")
            + (
                Rule("events", "time_range", each="array", member="time"),
                Rule("float_attributes", "finite", each="map"),
                Rule("response_logprobs", "not_nan", each="array"),
            ),
        ),
        RecordRules("reward", _finite("value") + _times("timestamp")),
        RecordRules("rollout_event", _times("timestamp", "started_at")),
        RecordRules(
            "triplet",
            _finite("reward")
            + (Rule("reward_dimensions", "finite", each="map"),)
            + _times("created_at", "emitted_at")
            + (Rule("response_logprobs", "not_nan", each="array"),),
        ),
        RecordRules(
            "rollout_state",
            _times("created_at", "updated_at", "ended_at")
            + tuple(
                Rule("attempts", "time_range", each="array", member=member)
                for member in ("started_at", "ended_at", "last_heartbeat")
            )
            + _finite("reward_sum", "last_reward"),
        ),
        RecordRules(
            "version_metrics",
            _times("window_start", "window_end", "emitted_at")
            + _finite("reward_sum", "reward_sum_squares", "latency_ms_sum", "latency_ms_max"),
        ),
        RecordRules("resource_version", _times("created_at")),
        RecordRules("resource_label", _times("moved_at")),
        RecordRules(
            "promotion_decision", _times("evidence_since", "decided_at") + _finite("margin", "alpha")
        ),
    )
}


def validate(stem: str, datum: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidRecordError` when the decoded ``datum`` of record type ``stem`` (schema
    stem, e.g. ``"reward"``) breaks a rule; record types without rules are always valid.

    Timestamps may be µs integers or datetimes (as fastavro decodes ``timestamp-micros``).
    """
    rules = RULES.get(stem)
    if rules is not None:
        rules.validate(datum)


def clickhouse_constraints(stem: str) -> dict[str, str]:
    """Constraint name -> ``CHECK`` expression enforcing :func:`validate` on the table of ``stem``."""
    rules = RULES.get(stem)
    return rules.constraints() if rules is not None else {}
