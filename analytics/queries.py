"""The dashboard's read layer: every query it runs, over the analytics views of ``0004_analytics.sql``.

User input never becomes SQL text. Values travel as ClickHouse query parameters (``{name:Type}``,
bound by the server); the few choices that change a statement's shape (which filters apply, the
sort column and direction) pick fixed SQL fragments from allow-lists. Filters are validated by
:class:`RolloutFilter` before any query runs, so bad input is a clear error, never a query.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agentstream.schemas.rollout_event import RolloutStatus
from agentstream.schemas.version_metrics import TRAFFIC_MODES

from .waterfall import Waterfall, build_waterfall

FailureCause = Literal[
    "timeout", "tool_error", "parse_error", "llm_error", "prompt_drift", "task_failed", "cancelled"
]
FAILURE_CAUSES: tuple[str, ...] = get_args(FailureCause)
RolloutSort = Literal["created_at", "ended_at", "latency", "reward", "cost"]

# sort key -> the column of the grouped rollout rows it orders by
_SORT_COLUMNS: dict[str, str] = {
    "created_at": "created_at",
    "ended_at": "ended_at",
    "latency": "latency_ms",
    "reward": "reward_mean",
    "cost": "cost",
}
_ORDERS = {"asc": "ASC", "desc": "DESC"}
_RELATIVE = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_NAME = r"^[A-Za-z0-9_.:\-]+$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the per-version figures of the version_summary view (0004_analytics.sql), for any grouping and
#: time range of rollout_outcomes: the dashboard's A/B view and the report share them
VERSION_AGGREGATES = """
    count() AS rollouts,
    countIf(status = 'succeeded') AS succeeded,
    countIf(status = 'failed') AS failed,
    if(succeeded + failed > 0, succeeded / (succeeded + failed), NULL) AS success_rate,
    if(sum(reward_count) > 0, sum(reward_sum) / sum(reward_count), NULL) AS reward_mean,
    countIf(handed_off) / count() AS handoff_rate,
    quantileExactIf(0.5)(latency_ms, latency_ms IS NOT NULL) AS latency_p50_ms,
    quantileExactIf(0.95)(latency_ms, latency_ms IS NOT NULL) AS latency_p95_ms,
    quantileExactIf(0.99)(latency_ms, latency_ms IS NOT NULL) AS latency_p99_ms,
    sum(llm_calls) AS llm_calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost) AS cost"""
MAX_SPANS = 5_000  # a detail page draws at most this many spans of one rollout


class NotFound(LookupError):
    """The rollout, resource or version asked for does not exist."""


def parse_time(value: Any) -> datetime | None:
    """A UTC datetime from ISO 8601 (naive means UTC), epoch seconds, or an age like ``15m``/``2h``/``7d``."""
    if value is None or isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        text = str(value).strip()
        if not text:
            return None
        relative = _RELATIVE.match(text)
        if relative:
            amount, unit = relative.groups()
            return datetime.now(UTC) - timedelta(**{_UNITS[unit]: int(amount)})
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{text!r} is not a time: use ISO 8601 (2025-01-31T12:00), or an age like 30m, 2h, 7d"
            ) from None
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class RolloutFilter(BaseModel):
    """What the rollouts list shows: every field is optional and narrows the list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: RolloutStatus | None = None
    resource: str | None = Field(None, max_length=200, pattern=_NAME, description="Ran with this resource.")
    version: str | None = Field(None, max_length=64, pattern=_NAME, description="... in this version.")
    since: datetime | None = Field(None, description="Created at or after (ISO 8601 or an age: 30m, 2h, 7d).")
    until: datetime | None = Field(None, description="Created before.")
    min_reward: float | None = Field(None, allow_inf_nan=False, description="Mean reward at least this.")
    max_reward: float | None = Field(None, allow_inf_nan=False, description="Mean reward at most this.")
    cause: FailureCause | None = Field(None, description="Failure cause (see rollout_outcomes).")
    mode: str | None = Field(None, max_length=64, pattern=_NAME, description="train, val, test, prod ...")
    task_type: str | None = Field(None, max_length=200, pattern=_NAME)
    sort: RolloutSort = "created_at"
    order: Literal["asc", "desc"] = "desc"
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=1_000_000)

    @field_validator("since", "until", mode="before")
    @classmethod
    def _time(cls, value: Any) -> datetime | None:
        return parse_time(value)

    @model_validator(mode="after")
    def _ranges(self) -> RolloutFilter:
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")
        if self.min_reward is not None and self.max_reward is not None and self.min_reward > self.max_reward:
            raise ValueError("min_reward must not exceed max_reward")
        return self

    def query_string(self, **changes: Any) -> str:
        """These filters (with ``changes``) as URL query parameters, for links between pages."""
        from urllib.parse import urlencode

        data = self.model_copy(update=changes).model_dump(exclude_defaults=True, mode="json")
        return urlencode({k: v for k, v in data.items() if v is not None})


class DashboardQueries:
    """The dashboard's queries over one clickhouse-connect client (chDB, the sink's gateway or a server).

    Every method returns plain dicts and lists (JSON-ready apart from datetimes); raises
    :class:`NotFound` for a rollout, resource or version that does not exist.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def _rows(self, sql: str, **parameters: Any) -> list[dict[str, Any]]:
        result = self.client.query(sql, parameters=parameters)
        return list(result.named_results())

    # ---- rollouts ---------------------------------------------------------------------------------
    def rollouts(self, where: RolloutFilter) -> dict[str, Any]:
        """One page of rollouts: ``{"total": n, "rows": [...], "filter": {...}}``, newest first by default.

        A row has the rollout's status, mode, task type, times, latency, mean reward, cost, handoff,
        failure cause and ``versions`` (``[[resource, version], ...]``).
        """
        conditions, having = ["1"], ["1"]
        parameters: dict[str, Any] = {"limit": where.limit, "offset": where.offset}
        if where.status is not None:
            conditions.append("o.status = {status:String}")
            parameters["status"] = where.status.value
        if where.cause is not None:
            conditions.append("o.failure_cause = {cause:String}")
            parameters["cause"] = where.cause
        if where.mode is not None:
            conditions.append("o.mode = {mode:String}")
            parameters["mode"] = where.mode
        if where.task_type is not None:
            conditions.append("o.task_type = {task_type:String}")
            parameters["task_type"] = where.task_type
        if where.since is not None:
            conditions.append("o.created_at >= {since:DateTime64(6, 'UTC')}")
            parameters["since"] = where.since
        if where.until is not None:
            conditions.append("o.created_at < {until:DateTime64(6, 'UTC')}")
            parameters["until"] = where.until
        if where.min_reward is not None:
            conditions.append("o.reward_mean >= {min_reward:Float64}")
            parameters["min_reward"] = where.min_reward
        if where.max_reward is not None:
            conditions.append("o.reward_mean <= {max_reward:Float64}")
            parameters["max_reward"] = where.max_reward
        if where.resource is not None:
            parameters["resource"] = where.resource
            if where.version is not None:
                having.append(
                    "countIf(resource_name = {resource:String} AND resource_version = {version:String}) > 0"
                )
                parameters["version"] = where.version
            else:
                having.append("countIf(resource_name = {resource:String}) > 0")
        elif where.version is not None:
            having.append("countIf(resource_version = {version:String}) > 0")
            parameters["version"] = where.version
        order = f"{_SORT_COLUMNS[where.sort]} {_ORDERS[where.order]}"
        sql = f"""
            SELECT rollout_id, status, task_type, mode, created_at, ended_at, error, attempt_count,
                   reward_mean, latency_ms, cost, handed_off, failure_cause, versions,
                   count() OVER () AS total
            FROM
            (
                SELECT rollout_id,
                       any(o.status) AS status, any(o.task_type) AS task_type, any(o.mode) AS mode,
                       any(o.created_at) AS created_at, any(o.ended_at) AS ended_at, any(o.error) AS error,
                       any(o.attempt_count) AS attempt_count, any(o.reward_mean) AS reward_mean,
                       any(o.latency_ms) AS latency_ms, any(o.cost) AS cost, any(o.handed_off) AS handed_off,
                       any(o.failure_cause) AS failure_cause,
                       arrayFilter(v -> v.1 != '', groupArray((o.resource_name, o.resource_version))) AS versions
                FROM rollout_outcomes AS o
                WHERE {" AND ".join(conditions)}
                GROUP BY rollout_id
                HAVING {" AND ".join(having)}
            )
            ORDER BY {order} NULLS LAST, rollout_id
            LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}
        """  # the fragments above are constants; every value is a bound parameter
        rows = self._rows(sql, **parameters)
        total = rows[0].pop("total") if rows else self._count_without_page(where)
        for row in rows[1:]:
            row.pop("total")
        for row in rows:
            row["handed_off"] = bool(row["handed_off"])
            row["versions"] = [list(v) for v in row["versions"]]
        return {"total": total, "rows": rows, "filter": where.model_dump(mode="json", exclude_none=True)}

    def _count_without_page(self, where: RolloutFilter) -> int:
        """The number of matching rollouts when the page is past the end (no row carries the total)."""
        if where.offset == 0:
            return 0
        first = self.rollouts(where.model_copy(update={"offset": 0, "limit": 1}))
        return int(first["total"])

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        """Everything about one rollout: header, attempts, the span waterfall, rewards and handoff."""
        found = self._rows(
            """
            SELECT rollout_id, status, task_type, mode, resources, input, created_at, updated_at, ended_at,
                   error, attempt_count, reward_count, reward_mean, last_reward, llm_calls, input_tokens,
                   output_tokens, started_at, latency_ms, queue_ms
            FROM rollouts WHERE rollout_id = {rollout_id:String}
            """,
            rollout_id=rollout_id,
        )
        if not found:
            raise NotFound(f"no rollout {rollout_id!r}")
        header = found[0]
        outcome = self._rows(
            """
            SELECT any(failure_cause) AS failure_cause, any(cost) AS cost, any(handed_off) AS handed_off
            FROM rollout_outcomes WHERE rollout_id = {rollout_id:String}
            """,
            rollout_id=rollout_id,
        )
        header.update(outcome[0] if outcome else {"failure_cause": "", "cost": 0.0, "handed_off": False})
        header["handed_off"] = bool(header["handed_off"])
        handoffs = self._rows(
            "SELECT handed_off_at, handed_to, reason FROM handoffs WHERE rollout_id = {rollout_id:String}",
            rollout_id=rollout_id,
        )
        attempts = self._rows(
            """
            SELECT attempt_id, attempt_number, status, worker_id, started_at, ended_at, last_heartbeat, error,
                   duration_ms, resources
            FROM attempts WHERE rollout_id = {rollout_id:String} ORDER BY attempt_number
            """,
            rollout_id=rollout_id,
        )
        spans = self._rows(
            """
            SELECT span_id, parent_span_id, trace_id, attempt_id, sequence_id, name, kind, start_time, end_time,
                   duration_ms, status, error, attributes, int_attributes, float_attributes, bool_attributes,
                   array_attributes, events, resource_name, resource_version, request_model, input_tokens,
                   output_tokens, tool_name
            FROM spans FINAL WHERE rollout_id = {rollout_id:String}
            ORDER BY start_time, sequence_id
            LIMIT {limit:UInt32}
            """,
            rollout_id=rollout_id,
            limit=MAX_SPANS + 1,
        )
        rewards = self._rows(
            """
            SELECT reward_id, attempt_id, span_id, parent_span_id, name, value, feedback, source, timestamp,
                   attributes
            FROM rewards FINAL WHERE rollout_id = {rollout_id:String} ORDER BY timestamp, sequence_id
            """,
            rollout_id=rollout_id,
        )
        truncated = len(spans) > MAX_SPANS
        waterfall: Waterfall = build_waterfall(spans[:MAX_SPANS], rewards)
        return {
            "rollout": header,
            "handoff": handoffs[0] if handoffs else None,
            "attempts": attempts,
            "waterfall": waterfall,
            "spans_truncated": truncated,
            "rewards": rewards,
        }

    # ---- resources ----------------------------------------------------------------------------------
    def _labels(self, resource: str | None = None) -> list[dict[str, Any]]:
        """Every label move, newest first (of one resource, or all)."""
        return self._rows(
            """
            SELECT resource_name, label, version, previous_version, reason, decision_id, moved_at, moved_by
            FROM resource_labels FINAL
            WHERE {resource:String} = '' OR resource_name = {resource:String}
            ORDER BY resource_name, moved_at DESC, _offset DESC
            """,
            resource=resource or "",
        )

    @staticmethod
    def _current(moves: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
        """Where each label points now, per resource (a removed label is absent)."""
        current: dict[str, dict[str, int]] = {}
        seen: set[tuple[str, str]] = set()
        for move in moves:  # newest first
            key = (move["resource_name"], move["label"])
            if key in seen:
                continue
            seen.add(key)
            if move["version"] is not None:
                current.setdefault(move["resource_name"], {})[move["label"]] = move["version"]
        return current

    def resources(self) -> list[dict[str, Any]]:
        """Every resource: kind, version count, latest version, when it last changed, current labels."""
        rows = self._rows(
            """
            SELECT resource_name, any(kind) AS kind, count() AS versions, max(version) AS latest_version,
                   max(created_at) AS updated_at
            FROM resource_versions FINAL GROUP BY resource_name ORDER BY resource_name
            """
        )
        labels = self._current(self._labels())
        for row in rows:
            row["labels"] = labels.get(row["resource_name"], {})
        return rows

    def resource(self, name: str) -> dict[str, Any]:
        """One resource: its versions (newest first), current labels and the label history."""
        versions = self._rows(
            """
            SELECT version, kind, template, variables, uri, config, parent_version, lineage, content_hash,
                   created_at, created_by
            FROM resource_versions FINAL WHERE resource_name = {name:String} ORDER BY version DESC
            """,
            name=name,
        )
        if not versions:
            raise NotFound(f"no resource {name!r}")
        history = self._labels(name)
        current = self._current(history).get(name, {})
        for version in versions:
            version["labels"] = sorted(label for label, v in current.items() if v == version["version"])
        return {"name": name, "versions": versions, "labels": current, "label_history": history}

    def diff(self, name: str, a: int, b: int) -> dict[str, Any]:
        """A unified diff of two versions' content (the template; else uri, config and variables)."""
        rows = self._rows(
            """
            SELECT version, kind, template, variables, uri, config
            FROM resource_versions FINAL
            WHERE resource_name = {name:String} AND version IN ({a:Int32}, {b:Int32})
            """,
            name=name,
            a=a,
            b=b,
        )
        by_version = {row["version"]: row for row in rows}
        missing = [v for v in (a, b) if v not in by_version]
        if missing:
            raise NotFound(f"resource {name!r} has no version {missing[0]}")
        old, new = _content(by_version[a]), _content(by_version[b])
        lines = list(
            difflib.unified_diff(
                old.splitlines(),
                new.splitlines(),
                fromfile=f"{name} v{a}",
                tofile=f"{name} v{b}",
                lineterm="",
            )
        )
        return {"name": name, "a": a, "b": b, "changed": bool(lines), "lines": [_diff_line(x) for x in lines]}

    # ---- A/B ----------------------------------------------------------------------------------------------
    def ab_resources(self) -> list[str]:
        """Resources that rollouts ran with, the labelled ones first."""
        rows = self._rows(
            """
            SELECT resource_name FROM
            (
                SELECT resource_name, 1 AS labelled FROM resource_labels FINAL
                UNION ALL
                SELECT resource_name, 0 FROM version_metrics FINAL
            )
            WHERE resource_name != ''
            GROUP BY resource_name ORDER BY max(labelled) DESC, resource_name
            """
        )
        return [row["resource_name"] for row in rows]

    def ab(
        self, resource: str, since: datetime | None = None, modes: Sequence[str] = TRAFFIC_MODES
    ) -> dict[str, Any]:
        """Per version of ``resource``: outcomes since ``since`` (all time when None), labels, decisions.

        A version row has rollouts, succeeded, failed, success_rate, reward_mean, handoff_rate,
        latency p50/p95/p99 (ms), llm_calls, tokens, cost and the labels pointing at it. Counts the
        rollouts of ``modes``: the A/B traffic by default, not the pinned ``val`` / ``test`` ones."""
        versions = self._rows(
            """
            SELECT
                resource_version AS version,"""
            + VERSION_AGGREGATES
            + """,
                min(created_at) AS first_seen,
                max(created_at) AS last_seen
            FROM rollout_outcomes
            WHERE resource_name = {resource:String} AND created_at >= {since:DateTime64(6, 'UTC')}
              AND mode IN {modes:Array(String)}
            GROUP BY resource_version
            ORDER BY toInt64OrZero(resource_version), resource_version
            """,  # the same figures as the version_summary view, over a time range and modes
            resource=resource,
            since=since or _EPOCH,
            modes=list(modes),
        )
        labels = self._current(self._labels(resource)).get(resource, {})
        for row in versions:
            row["labels"] = sorted(label for label, v in labels.items() if str(v) == row["version"])
        decisions = self._rows(
            """
            SELECT decision_id, action, candidate_version, production_version, metric, test, candidate_n,
                   candidate_successes, production_n, production_successes, difference, statistic, p_value,
                   margin, alpha, min_samples, reason, decided_at
            FROM promotion_decisions FINAL
            WHERE resource_name = {resource:String}
            ORDER BY decided_at DESC LIMIT 20
            """,
            resource=resource,
        )
        return {
            "resource": resource,
            "since": since,
            "modes": list(modes),
            "labels": labels,
            "versions": versions,
            "decisions": decisions,
        }

    def ab_series(
        self, resource: str, since: datetime | None = None, modes: Sequence[str] = TRAFFIC_MODES
    ) -> dict[str, Any]:
        """The live per-window metrics of every version of ``resource`` over ``modes`` (as in :meth:`ab`)."""
        rows = self._rows(
            """
            SELECT version, window_start, window_end, n AS rollouts, ok AS succeeded, bad AS failed,
                   if(n > 0, ok / n, NULL) AS success_rate, r AS rewards, if(r > 0, r_sum / r, NULL) AS
                   reward_mean, if(n > 0, l_sum / n, NULL) AS latency_ms_mean, l_max AS latency_ms_max,
                   calls AS llm_calls, tokens_in AS input_tokens, tokens_out AS output_tokens
            FROM (SELECT resource_version AS version, window_start, any(window_end) AS window_end,
                    sum(rollouts) AS n, sum(succeeded) AS ok, sum(failed) AS bad, sum(rewards) AS r,
                    sum(reward_sum) AS r_sum, sum(latency_ms_sum) AS l_sum, max(latency_ms_max) AS l_max,
                    sum(llm_calls) AS calls, sum(input_tokens) AS tokens_in, sum(output_tokens) AS tokens_out
                  FROM version_metrics_by_window WHERE resource_name = {resource:String} AND
                    window_start >= {since:DateTime64(6, 'UTC')} AND mode IN {modes:Array(String)}
                  GROUP BY resource_version, window_start)
            ORDER BY window_start, version
            """,
            resource=resource,
            since=since or _EPOCH,
            modes=list(modes),
        )
        series: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            series.setdefault(row.pop("version"), []).append(row)
        return {"resource": resource, "since": since, "modes": list(modes), "series": series}


def _content(version: dict[str, Any]) -> str:
    template: str | None = version["template"]
    if template is not None:
        return template
    described = {"uri": version["uri"], "config": version["config"], "variables": version["variables"]}
    return json.dumps(described, indent=2, sort_keys=True, default=str)


def _diff_line(line: str) -> dict[str, str]:
    if line.startswith(("---", "+++")):
        kind = "file"
    elif line.startswith("@@"):
        kind = "hunk"
    elif line.startswith("+"):
        kind = "add"
    elif line.startswith("-"):
        kind = "del"
    else:
        kind = "same"
    return {"kind": kind, "text": line}
