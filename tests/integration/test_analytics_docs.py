"""The ten queries of docs/analytics.md, run against the analytics scenario's history, with their figures
checked; and the views' safety under redelivery (every record inserted twice changes no figure)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agentstream.sinks.migrations import migrate
from tests.analytics_scenario import MODEL, RESOURCE, expected_version

if TYPE_CHECKING:
    from tests.integration.conftest import AnalyticsData

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"
_QUERY = re.compile(r"^### (\d+)\. (.+?)\n\n(.+?)\n\n```sql\n(.*?)```", re.MULTILINE | re.DOTALL)
_PARAMETER = re.compile(r"\{(\w+):")

#: tables the sink fills from Kafka (plus the prices an analyst sets): what a redelivery duplicates
HISTORY_TABLES = ("rollout_states", "spans", "rewards", "triplets", "model_prices", "resource_labels")


def doc_queries() -> dict[int, tuple[str, str, str]]:
    """{number: (title, why, sql)} of the docs' numbered queries."""
    return {int(m.group(1)): (m.group(2), m.group(3), m.group(4)) for m in _QUERY.finditer(DOCS.read_text())}


def parameters_for(sql: str, data: AnalyticsData) -> dict[str, Any]:
    """The values the docs' ``{name:Type}`` placeholders get here."""
    values = {
        "resource": RESOURCE,
        "since": datetime.fromtimestamp(data.facts.started_at, UTC) - timedelta(minutes=5),
        "min_reward": 1.0,
    }
    return {name: values[name] for name in set(_PARAMETER.findall(sql))}


def run(client: Any, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=parameters)
    return [dict(zip(result.column_names, row)) for row in result.result_rows]


def copy_history(source: Any, target: Any, offset_shift: int = 0) -> None:
    """Insert every row of the history tables of ``source`` into ``target``, as the sink would write them
    again after a redelivery: same values, Kafka offsets moved by ``offset_shift``, a new ``ingested_at``."""
    for table in HISTORY_TABLES:
        columns = [
            c for c in source.query(f"SELECT * FROM {table} LIMIT 0").column_names if c != "ingested_at"
        ]
        select = [f"_offset + {offset_shift} AS _offset" if c == "_offset" else c for c in columns]
        block = source.raw_query(f"SELECT {', '.join(select)} FROM {table}", fmt="Native")
        target.raw_insert(table, columns, insert_block=block, fmt="Native")


@pytest.fixture(scope="module")
def results(analytics_data: AnalyticsData) -> dict[int, list[dict[str, Any]]]:
    client = analytics_data.client()
    return {
        n: run(client, sql, parameters_for(sql, analytics_data)) for n, (_, _, sql) in doc_queries().items()
    }


def by_version(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        assert row["resource_name"] == RESOURCE
        out.setdefault(row["resource_version"], []).append(row)
    return out


def test_the_docs_hold_ten_numbered_queries_each_with_a_reason() -> None:
    queries = doc_queries()
    assert sorted(queries) == list(range(1, 11))
    for title, why, sql in queries.values():
        assert title.strip() and len(why.split()) >= 5, (title, why)
        assert sql.lstrip().upper().startswith(("SELECT", "WITH")), title


def test_1_success_rate_reward_and_handoffs_per_version(results: dict, analytics_data: AnalyticsData) -> None:
    facts = analytics_data.facts
    rows = {r["resource_version"]: r for r in results[1]}
    assert sorted(rows) == ["1", "2"]
    for version, row in rows.items():
        expected = expected_version(facts, version)
        # one routing reward per rollout (1.0 when it succeeded) and a 0.0 resolution per handoff
        reward_mean = expected["succeeded"] / (expected["rollouts"] + expected["handoffs"])
        assert row["rollouts"] == expected["rollouts"] == 20
        assert (row["succeeded"], row["failed"]) == (expected["succeeded"], expected["failed"])
        assert row["success_rate"] == pytest.approx(expected["success_rate"], abs=1e-3)
        assert row["reward_mean"] == pytest.approx(reward_mean, abs=1e-3)
        assert row["handoff_rate"] == pytest.approx(expected["handoff_rate"], abs=1e-3)
        assert row["cost"] == pytest.approx(expected["cost"], rel=1e-9)
        assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
    assert rows["1"]["success_rate"] == pytest.approx(0.5) and rows["2"]["success_rate"] == pytest.approx(
        0.75
    )
    assert rows["1"]["handoff_rate"] == pytest.approx(0.1) and rows["2"]["handoff_rate"] == pytest.approx(
        0.25
    )


def test_2_ab_compares_the_candidate_with_the_production_it_challenged(
    results: dict, analytics_data: AnalyticsData
) -> None:
    [row] = results[2]
    production, candidate = (
        expected_version(analytics_data.facts, "1"),
        expected_version(analytics_data.facts, "2"),
    )
    # production moved to v2 after the run: the A/B still compares v2 with v1, the version it challenged
    assert (row["production_version"], row["candidate_version"]) == ("1", "2")
    assert (row["production_n"], row["production_successes"]) == (20, production["succeeded"])
    assert (row["candidate_n"], row["candidate_successes"]) == (20, candidate["succeeded"])
    pooled = (production["succeeded"] + candidate["succeeded"]) / 40
    z = (candidate["success_rate"] - production["success_rate"]) / math.sqrt(pooled * (1 - pooled) * (2 / 20))
    assert row["difference"] == pytest.approx(0.25)
    assert row["z"] == pytest.approx(z, abs=1e-3) and 1.6 < row["z"] < 1.7


def test_3_failure_causes_per_version(results: dict, analytics_data: AnalyticsData) -> None:
    facts = analytics_data.facts
    for version, rows in by_version(results[3]).items():
        expected = Counter(r["cause"] for r in facts.of_version(version) if r["cause"])
        assert {r["failure_cause"]: r["rollouts"] for r in rows} == dict(expected)
        failed = sum(expected.values())
        for row in rows:
            assert row["share"] == pytest.approx(row["rollouts"] / failed, abs=1e-3)
            assert row["example_error"]
    assert {r["failure_cause"] for r in results[3] if r["resource_version"] == "1"} == {
        "tool_error",
        "parse_error",
        "task_failed",
        "prompt_drift",
        "llm_error",
    }
    assert [(r["failure_cause"], r["rollouts"]) for r in results[3] if r["resource_version"] == "2"] == [
        ("task_failed", 5)
    ]


def _quantile_exact(values: list[float], level: float) -> float:
    """ClickHouse's quantileExact: the element at index floor(level * n) of the sorted values."""
    ordered = sorted(values)
    return ordered[min(int(level * len(ordered)), len(ordered) - 1)]


def test_4_slowest_rollouts_are_those_at_or_above_their_versions_p99(
    results: dict, analytics_data: AnalyticsData
) -> None:
    latencies = run(analytics_data.client(), "SELECT rollout_id, resources, latency_ms FROM rollouts", {})
    assert len(latencies) == 40 and all(r["latency_ms"] is not None for r in latencies)
    expected: set[str] = set()
    for version in ("1", "2"):
        of_version = [r for r in latencies if r["resources"][RESOURCE] == version]
        p99 = _quantile_exact([r["latency_ms"] for r in of_version], 0.99)
        expected |= {r["rollout_id"] for r in of_version if r["latency_ms"] >= p99}
    assert {r["rollout_id"] for r in results[4]} == expected
    assert {r["resource_version"] for r in results[4]} == {"1", "2"}
    latencies_shown = [r["latency_ms"] for r in results[4]]
    assert latencies_shown == sorted(latencies_shown, reverse=True)
    for row in results[4]:
        assert row["latency_ms"] >= row["version_p99_ms"] and row["spans"] >= 2 and row["llm_calls"] == 1


def test_5_cost_per_version_per_day(results: dict, analytics_data: AnalyticsData) -> None:
    for version, rows in by_version(results[5]).items():
        expected = expected_version(analytics_data.facts, version)
        assert sum(r["rollouts"] for r in rows) == expected["rollouts"]
        assert sum(r["llm_calls"] for r in rows) == expected["rollouts"]  # one LLM call per rollout
        assert sum(r["input_tokens"] for r in rows) == expected["input_tokens"]
        assert sum(r["output_tokens"] for r in rows) == expected["output_tokens"]
        assert sum(r["cost"] for r in rows) == pytest.approx(expected["cost"], rel=1e-9)
        for row in rows:
            assert row["cost_per_rollout"] == pytest.approx(row["cost"] / row["rollouts"])


def test_6_handoff_rate_trend(results: dict, analytics_data: AnalyticsData) -> None:
    for version, rows in by_version(results[6]).items():
        expected = expected_version(analytics_data.facts, version)
        assert sum(r["handoffs"] for r in rows) == expected["handoffs"]
        assert sum(r["rollouts"] for r in rows) == expected["rollouts"]
        for row in rows:
            assert row["handoff_rate"] == pytest.approx(row["handoffs"] / row["rollouts"], abs=1e-3)
    assert {v: sum(r["handoffs"] for r in rows) for v, rows in by_version(results[6]).items()} == {
        "1": 2,
        "2": 5,
    }


def test_7_reward_distribution(results: dict, analytics_data: AnalyticsData) -> None:
    facts = analytics_data.facts
    for version, rows in by_version(results[7]).items():
        expected = expected_version(facts, version)
        got = {(r["reward"], r["source"], r["bucket"]): r["rewards"] for r in rows}
        assert got == {
            ("routing", "rule", 1.0): expected["succeeded"],
            ("routing", "rule", 0.0): expected["failed"],
            ("resolution", "business_event", 0.0): expected["handoffs"],
        }


def test_8_top_tool_errors_show_the_arguments(results: dict, analytics_data: AnalyticsData) -> None:
    [row] = results[8]
    failing = analytics_data.facts.failing("tool_error")
    assert row["tool_name"] == "create_ticket" and "queue must be one of" in row["error"]
    assert row["calls"] == row["rollouts"] == len(failing) == 2
    assert sorted(row["example_rollouts"]) == failing
    arguments = [json.loads(a) for a in row["example_arguments"]]
    assert all(a["queue"] is None for a in arguments)
    tickets = {analytics_data.facts.rollouts[rid]["ticket_id"] for rid in failing}
    assert {a["ticket"] for a in arguments} == tickets


def test_9_rollouts_whose_prompt_drifted(results: dict, analytics_data: AnalyticsData) -> None:
    assert sorted(r["rollout_id"] for r in results[9]) == analytics_data.facts.failing("prompt_drift")
    assert {(r["resource_name"], r["given_version"], r["used_version"]) for r in results[9]} == {
        (RESOURCE, "1", "2")
    }


def test_10_triplets_ready_for_sft(results: dict, analytics_data: AnalyticsData) -> None:
    facts = analytics_data.facts
    # a drifted rollout's LLM call ran v2: its triplet is v2's (and failed)
    ready = Counter(
        "2" if r["cause"] == "prompt_drift" else r["version"]
        for r in facts.rollouts.values()
        if r["succeeded"]
    )
    rows = {r["resource_version"]: r for r in results[10]}
    assert {v: r["ready"] for v, r in rows.items()} == dict(ready) == {"1": 10, "2": 15}
    assert {v: r["ready_rollouts"] for v, r in rows.items()} == dict(ready)
    assert sum(r["triplets"] for r in rows.values()) >= facts.triplets


def _normalised(rows: list[dict[str, Any]]) -> list[tuple]:
    """Rows comparable across runs: arrays as sorted tuples (groupUniqArray has no order), floats rounded."""

    def value(v: Any) -> Any:
        if isinstance(v, list):
            return tuple(sorted(map(str, v)))
        if isinstance(v, float):
            return round(v, 9)
        return v

    return [tuple(value(v) for v in row.values()) for row in rows]


def test_views_and_queries_are_unchanged_when_every_record_arrives_twice(
    analytics_data: AnalyticsData, clickhouse: Any
) -> None:
    source = analytics_data.client()
    migrate(clickhouse)
    for table in HISTORY_TABLES:
        # merges would collapse the duplicates themselves: the views must do without them
        clickhouse.command(f"SYSTEM STOP MERGES {table}")
    copy_history(source, clickhouse)
    copied = {
        table: clickhouse.query(f"SELECT count() FROM {table}").result_rows[0][0] for table in HISTORY_TABLES
    }
    views = {
        "version_summary": "SELECT * FROM version_summary ORDER BY resource_name, resource_version",
        "rollout_outcomes": "SELECT * FROM rollout_outcomes ORDER BY rollout_id, resource_name",
        "attempts": "SELECT * FROM attempts ORDER BY rollout_id, attempt_number",
        "handoffs": "SELECT * FROM handoffs ORDER BY rollout_id",
        "llm_call_costs": "SELECT * FROM llm_call_costs ORDER BY span_id",
    }
    queries = {**views, **{f"query {n}": sql for n, (_, _, sql) in doc_queries().items()}}

    def figures() -> dict[str, list[tuple]]:
        return {
            name: _normalised(run(clickhouse, sql, parameters_for(sql, analytics_data)))
            for name, sql in queries.items()
        }

    once = figures()
    summary = {r["resource_version"]: r for r in run(clickhouse, views["version_summary"], {})}
    for version in ("1", "2"):
        expected = expected_version(analytics_data.facts, version)
        assert summary[version]["rollouts"] == expected["rollouts"]
        assert summary[version]["success_rate"] == pytest.approx(expected["success_rate"])
        assert summary[version]["cost"] == pytest.approx(expected["cost"])

    copy_history(source, clickhouse, offset_shift=1_000_000)  # the redelivery: same records, new offsets
    for table in HISTORY_TABLES:
        assert clickhouse.query(f"SELECT count() FROM {table}").result_rows[0][0] == 2 * copied[table], table
    twice = figures()
    for name in queries:
        assert twice[name] == once[name], name
    assert all(once.values()), [name for name, rows in once.items() if not rows]


def test_the_docs_price_statement_sets_prices_and_a_new_price_replaces_the_old(
    analytics_data: AnalyticsData, clickhouse: Any
) -> None:
    text = DOCS.read_text()
    section = text[text.index("## Model prices") : text.index("## The ten queries")]
    [statement] = re.findall(r"```sql\n(.*?)```", section, re.DOTALL)
    migrate(clickhouse)
    copy_history(analytics_data.client(), clickhouse)
    clickhouse.command(statement)
    prices = dict(clickhouse.query("SELECT model, output_per_million FROM model_prices FINAL").result_rows)
    assert prices["gpt-4.1-mini"] == pytest.approx(1.60) and prices["gemma-3-270m"] == 0

    def cost(version: str) -> float:
        return run(
            clickhouse, "SELECT cost FROM version_summary WHERE resource_version = {v:String}", {"v": version}
        )[0]["cost"]

    before = expected_version(analytics_data.facts, "1")["cost"]
    assert cost("1") == pytest.approx(before)
    clickhouse.command(
        "INSERT INTO model_prices (model, input_per_million, output_per_million) VALUES ({m:String}, 2.0, 4.0)",
        parameters={"m": MODEL},
    )
    assert cost("1") == pytest.approx(2 * before)  # the scenario's price was 1.0 / 2.0


README = DOCS.parents[1] / "README.md"


def test_the_readme_status_query_counts_each_rollout_once(analytics_data: AnalyticsData) -> None:
    """The README's first query: rollouts per status, each rollout once (its newest state), where
    `rollout_states FINAL` counted a rollout once per distinct state row."""
    [sql] = [q for q in re.findall(r'agentstream sql "(.+?)"', README.read_text()) if "status, count()" in q]
    rows = run(analytics_data.client(), sql, {})
    counts = {row["status"]: row["count()"] for row in rows}
    assert sum(counts.values()) == len(analytics_data.facts.rollouts)
    expected = Counter(
        "succeeded" if r["succeeded"] else "failed" for r in analytics_data.facts.rollouts.values()
    )
    assert counts == dict(expected)
