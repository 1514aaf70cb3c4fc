"""The evaluation report: per-group figures over a time range, as a rich table and a self-contained HTML file.

Built on the ``rollout_outcomes`` view (one row per rollout and resource version, deduplicated),
with the same formulas as ``version_summary``::

    report = EvaluationReport(connect(settings), since=parse_time("24h"), by="resource_version")
    console.print(report.table())
    report.write_html(Path("report.html"))
"""

from __future__ import annotations

import base64
import io
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.table import Table

from .queries import VERSION_AGGREGATES

#: what ``by`` may name, and the SQL of each group's label (never user text: an allow-list)
GROUPINGS: dict[str, str] = {
    "resource_version": "if(resource_name = '', '(no resource)', concat(resource_name, ':', resource_version))",
    "task_type": "if(task_type = '', '(none)', task_type)",
    "mode": "if(mode = '', '(none)', mode)",
    "model": "if(model = '', '(no LLM call)', model)",
}

#: time-bucket widths the plots choose from, in seconds
BUCKET_SECONDS = (1, 5, 15, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 48

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A point in time from ``90s``/``30m``/``24h``/``7d``/``2w`` (that long before ``now``), ``now`` or an
    ISO 8601 time (UTC unless it names a zone); returned in UTC.

    Raises:
        ValueError: the text is neither.
    """
    now = now or datetime.now(UTC)
    if text.strip().lower() == "now":
        return now
    duration = _DURATION.match(text)
    if duration:
        return now - timedelta(seconds=float(duration.group(1)) * _UNIT_SECONDS[duration.group(2).lower()])
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not a time: {text!r}; use a duration back from now (30m, 24h, 7d) or an ISO time (2025-06-01T12:00)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_resource(text: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:VERSION`` (``v2`` and ``2`` alike) as (name, version or None).

    Raises:
        ValueError: empty name or version.
    """
    name, sep, version = text.strip().partition(":")
    version = version.strip()
    if version.lower().startswith("v") and version[1:].isdigit():
        version = version[1:]
    if not name.strip() or (sep and not version):
        raise ValueError(f"expected a resource as NAME or NAME:VERSION, got {text!r}")
    return name.strip(), version if sep else None


@dataclass(frozen=True)
class GroupFigures:
    """One group's figures over the report's range (a row of the table)."""

    group: str
    rollouts: int
    succeeded: int
    failed: int
    success_rate: float | None
    reward_mean: float | None
    handoff_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    llm_calls: int
    input_tokens: int
    output_tokens: int
    cost: float


@dataclass(frozen=True)
class BucketFigures:
    """One group's figures in one time bucket (a point of the plots)."""

    group: str
    bucket: datetime
    rollouts: int
    success_rate: float | None
    reward_mean: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    cost: float


class EvaluationReport:
    """Success rate, reward, handoffs, latency and cost per group over ``[since, until)``, with failure causes.

    Args:
        client: a clickhouse-connect client (``agentstream.clickhouse.connect.connect(settings)``).
        since, until: the range of rollout creation times (UTC); None leaves that side open.
        by: ``resource_version`` (default), ``task_type``, ``mode`` or ``model``.
        resource: only rollouts that ran with this resource (``NAME`` or ``NAME:VERSION``).

    Raises:
        ValueError: an unknown ``by``, a bad ``resource`` or ``since`` not before ``until``.
    """

    def __init__(
        self,
        client: Any,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        by: str = "resource_version",
        resource: str | None = None,
    ) -> None:
        if by not in GROUPINGS:
            raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(GROUPINGS)}")
        if since is not None and until is not None and since >= until:
            raise ValueError(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
        self.client = client
        self.since = since
        self.until = until
        self.by = by
        self.resource = resource
        self.resource_name: str | None
        self.resource_version: str | None
        self.resource_name, self.resource_version = parse_resource(resource) if resource else (None, None)
        self.created_at = datetime.now(UTC)

    # ---- queries -----------------------------------------------------------------------------------
    def _parameters(self, **extra: Any) -> dict[str, Any]:
        values = {
            "since": self.since,
            "until": self.until,
            "resource_name": self.resource_name,
            "resource_version": self.resource_version,
            **extra,
        }
        return {k: v for k, v in values.items() if v is not None}

    def _base(self) -> str:
        """One row per rollout (per rollout and model, by model) in range, with a ``group_key``."""
        conditions = ["1"]
        if self.since is not None:
            conditions.append("created_at >= {since:DateTime64(6, 'UTC')}")
        if self.until is not None:
            conditions.append("created_at < {until:DateTime64(6, 'UTC')}")
        if self.resource_name is not None:
            conditions.append("resource_name = {resource_name:String}")
        if self.resource_version is not None:
            conditions.append("resource_version = {resource_version:String}")
        outcomes = f"SELECT * FROM rollout_outcomes WHERE {' AND '.join(conditions)}"
        if self.by == "resource_version":
            source = outcomes
        elif self.by == "model":
            # a rollout counts once per model it called, with that model's calls, tokens and cost
            source = f"""
                SELECT o.* EXCEPT (llm_calls, input_tokens, output_tokens, cost),
                       m.model AS model, m.llm_calls AS llm_calls, m.input_tokens AS input_tokens,
                       m.output_tokens AS output_tokens, m.cost AS cost
                FROM ({outcomes} LIMIT 1 BY rollout_id) AS o
                LEFT JOIN
                (
                    SELECT rollout_id, model, count() AS llm_calls, sum(input_tokens) AS input_tokens,
                           sum(output_tokens) AS output_tokens, sum(cost) AS cost
                    FROM llm_call_costs
                    GROUP BY rollout_id, model
                ) AS m ON m.rollout_id = o.rollout_id"""
        else:
            # a rollout that ran with several resources has a row for each: count it once
            source = f"{outcomes} LIMIT 1 BY rollout_id"
        return f"SELECT *, {GROUPINGS[self.by]} AS group_key FROM ({source})"

    def _query(self, sql: str, **extra: Any) -> list[dict[str, Any]]:
        result = self.client.query(sql, parameters=self._parameters(**extra))
        return [dict(zip(result.column_names, row)) for row in result.result_rows]

    @cached_property
    def groups(self) -> list[GroupFigures]:
        """The figures of every group, in group order."""
        rows = self._query(
            f"SELECT group_key, {VERSION_AGGREGATES} FROM ({self._base()}) GROUP BY group_key ORDER BY group_key"
        )
        return [GroupFigures(group=r.pop("group_key"), **{k: _number(v) for k, v in r.items()}) for r in rows]

    @cached_property
    def span(self) -> tuple[datetime, datetime] | None:
        """The first and last rollout creation time in range (None when there are none)."""
        rows = self._query(
            f"SELECT min(created_at) AS first, max(created_at) AS last, count() AS n FROM ({self._base()})"
        )
        if not rows or not rows[0]["n"]:
            return None
        return _utc(rows[0]["first"]), _utc(rows[0]["last"])

    @cached_property
    def bucket_seconds(self) -> int:
        """The plots' bucket width: the smallest that cuts the data's span into at most ``MAX_BUCKETS``."""
        if self.span is None:
            return BUCKET_SECONDS[0]
        seconds = (self.span[1] - self.span[0]).total_seconds()
        return next((b for b in BUCKET_SECONDS if seconds / b < MAX_BUCKETS), BUCKET_SECONDS[-1])

    @cached_property
    def timeline(self) -> list[BucketFigures]:
        """Per group and time bucket: success rate, reward, latency p50/p95 and cost."""
        rows = self._query(
            f"""
            SELECT group_key, toStartOfInterval(created_at, toIntervalSecond({{bucket:UInt32}})) AS bucket,
                   count() AS rollouts,
                   if(countIf(status IN ('succeeded', 'failed')) > 0,
                      countIf(status = 'succeeded') / countIf(status IN ('succeeded', 'failed')), NULL) AS success_rate,
                   if(sum(reward_count) > 0, sum(reward_sum) / sum(reward_count), NULL) AS reward_mean,
                   quantileExactIf(0.5)(latency_ms, latency_ms IS NOT NULL) AS latency_p50_ms,
                   quantileExactIf(0.95)(latency_ms, latency_ms IS NOT NULL) AS latency_p95_ms,
                   sum(cost) AS cost
            FROM ({self._base()})
            GROUP BY group_key, bucket
            ORDER BY group_key, bucket""",
            bucket=self.bucket_seconds,
        )
        return [
            BucketFigures(
                group=r.pop("group_key"),
                bucket=_utc(r.pop("bucket")),
                **{k: _number(v) for k, v in r.items()},
            )
            for r in rows
        ]

    @cached_property
    def failure_causes(self) -> dict[str, dict[str, int]]:
        """Failed and cancelled rollouts per group and cause, most frequent cause first."""
        rows = self._query(
            f"""
            SELECT group_key, failure_cause, count() AS rollouts FROM ({self._base()})
            WHERE failure_cause != ''
            GROUP BY group_key, failure_cause
            ORDER BY group_key, rollouts DESC, failure_cause"""
        )
        causes: dict[str, dict[str, int]] = {}
        for r in rows:
            causes.setdefault(r["group_key"], {})[r["failure_cause"]] = int(r["rollouts"])
        return causes

    # ---- output ------------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        since = self.since.strftime("%Y-%m-%d %H:%M:%S UTC") if self.since else "the beginning"
        until = self.until.strftime("%Y-%m-%d %H:%M:%S UTC") if self.until else "now"
        scope = f", resource {self.resource}" if self.resource else ""
        return f"Evaluation report by {self.by}: {since} to {until}{scope}"

    def table(self) -> Table:
        """The per-group figures as a rich table."""
        table = Table(title=self.title)
        for column in (
            self.by,
            "rollouts",
            "ok",
            "failed",
            "success",
            "reward",
            "handoff",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "LLM calls",
            "tokens in/out",
            "cost",
            "top failure cause",
        ):
            table.add_column(column, justify="left" if column in (self.by, "top failure cause") else "right")
        for g in self.groups:
            causes = self.failure_causes.get(g.group, {})
            top = next(iter(causes.items()), None)
            table.add_row(
                g.group,
                str(g.rollouts),
                str(g.succeeded),
                str(g.failed),
                _percent(g.success_rate),
                _decimal(g.reward_mean),
                _percent(g.handoff_rate),
                _decimal(g.latency_p50_ms, 1),
                _decimal(g.latency_p95_ms, 1),
                _decimal(g.latency_p99_ms, 1),
                str(g.llm_calls),
                f"{g.input_tokens}/{g.output_tokens}",
                _money(g.cost),
                f"{top[0]} ({top[1]})" if top else "",
            )
        return table

    def write_html(self, path: Path) -> Path:
        """Write the report as one self-contained HTML file (plots inline, nothing fetched); returns the path."""
        import jinja2

        environment = jinja2.Environment(
            loader=jinja2.PackageLoader("agentstream.analytics", "templates"), autoescape=True
        )
        causes = sorted({cause for by_cause in self.failure_causes.values() for cause in by_cause})
        html = environment.get_template("evaluation_report.html").render(
            title=self.title,
            by=self.by,
            generated_at=self.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            span=self.span,
            bucket=_duration(self.bucket_seconds),
            groups=self.groups,
            causes=causes,
            failure_causes=self.failure_causes,
            plots=self._plots(),
            percent=_percent,
            decimal=_decimal,
            money=_money,
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
        return path

    # ---- plots -------------------------------------------------------------------------------------
    def _plots(self) -> list[dict[str, str]]:
        """Each plot as {title, src}: an SVG in a data URI (ids of inline SVGs would clash)."""
        if not self.groups:
            return []
        plots = [
            ("Success rate", [("success_rate", "-")], "success rate", True),
            ("Reward (mean)", [("reward_mean", "-")], "reward", False),
            (
                "Latency p50 (solid) and p95 (dashed)",
                [("latency_p50_ms", "-"), ("latency_p95_ms", "--")],
                "ms",
                False,
            ),
            ("Cost", [("cost", "-")], "cost", False),
        ]
        out = [
            {"title": title, "src": self._line_plot(series, ylabel, rate)}
            for title, series, ylabel, rate in plots
        ]
        if self.failure_causes:
            out.append({"title": f"Failure causes per {self.by}", "src": self._causes_plot()})
        return out

    def _colors(self) -> dict[str, Any]:
        from matplotlib import color_sequences

        palette = color_sequences["tab10"]
        return {g.group: palette[i % len(palette)] for i, g in enumerate(self.groups)}

    def _line_plot(self, series: list[tuple[str, str]], ylabel: str, rate: bool) -> str:
        # Dates go in as Matplotlib's day numbers, as its date converter would make them: its stubs
        # type plot() and set_xlim() for numbers only.
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
        from matplotlib.figure import Figure

        figure = Figure(figsize=(8, 3.2), layout="constrained")
        axes = figure.add_subplot()
        colors = self._colors()
        for group in colors:
            points = [b for b in self.timeline if b.group == group]
            for field, style in series:
                xs = [b.bucket for b in points if getattr(b, field) is not None]
                ys = [getattr(b, field) for b in points if getattr(b, field) is not None]
                if xs:
                    axes.plot(
                        date2num(xs),
                        ys,
                        style,
                        marker="o",
                        color=colors[group],
                        label=group if style == "-" else None,
                    )
        if self.timeline:
            # a single bucket would otherwise stretch the axis over years
            half = timedelta(seconds=self.bucket_seconds / 2)
            axes.set_xlim(
                date2num(min(b.bucket for b in self.timeline) - half),
                date2num(max(b.bucket for b in self.timeline) + half),
            )
        locator = AutoDateLocator()
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        axes.set_ylabel(ylabel)
        axes.set_xlabel(f"rollout creation (UTC), buckets of {_duration(self.bucket_seconds)}")
        if rate:
            axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        figure.legend(fontsize="small", loc="outside right upper")
        return _data_uri(figure)

    def _causes_plot(self) -> str:
        from matplotlib.figure import Figure

        groups = [g.group for g in self.groups]
        causes = sorted({cause for by_cause in self.failure_causes.values() for cause in by_cause})
        figure = Figure(figsize=(7.5, 0.5 + 0.45 * max(len(groups), 3)), layout="constrained")
        axes = figure.add_subplot()
        left = [0] * len(groups)
        for cause in causes:
            counts = [self.failure_causes.get(group, {}).get(cause, 0) for group in groups]
            axes.barh(groups, counts, left=left, label=cause)
            left = [a + b for a, b in zip(left, counts)]
        axes.invert_yaxis()
        axes.set_xlabel("failed or cancelled rollouts")
        figure.legend(fontsize="small", loc="outside right upper")
        return _data_uri(figure)


def _data_uri(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _number(value: Any) -> Any:
    """NaN (an aggregate over no rows) as None."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _decimal(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _money(value: float) -> str:
    return f"{value:.6f}" if value < 1 else f"{value:,.2f}"


def _duration(seconds: int) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
