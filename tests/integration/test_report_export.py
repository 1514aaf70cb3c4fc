"""`agentstream report` and `agentstream export triplets` over the analytics scenario's history."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agentstream.analytics.export import TripletExport, TripletExportConfig, redact_dsn
from agentstream.analytics.report import EvaluationReport, parse_resource, parse_time
from agentstream.sinks.migrations import migrate
from tests.analytics_scenario import MODEL, RESOURCE, expected_version
from tests.helpers import settings_env

if TYPE_CHECKING:
    from tests.integration.conftest import AnalyticsData

pytestmark = pytest.mark.integration

LINEAGE_COLUMNS = {
    "triplet_id", "prompt", "prompt_text", "response", "response_text", "reward", "feedback", "rollout_id",
    "attempt_id", "span_id", "step", "resource_name", "resource_version", "mode", "task_type", "model",
    "created_at", "triplet_version", "credit_assignment", "window_start", "window_end", "export_id",
}  # fmt: skip


def cli(data: AnalyticsData, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentstream.cli", *args],
        env={**settings_env(data.settings), "COLUMNS": "200"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def reward_mean(data: AnalyticsData, version: str) -> float:
    """One routing reward per rollout (1.0 when it succeeded), and a 0.0 resolution reward per handoff."""
    expected = expected_version(data.facts, version)
    return expected["succeeded"] / (expected["rollouts"] + expected["handoffs"])


def triplet_version(rollout: dict[str, Any]) -> str:
    """The resource version of a scenario rollout's LLM call (a drifted call used v2)."""
    return "2" if rollout["cause"] == "prompt_drift" else rollout["version"]


def succeeded_rollouts(data: AnalyticsData, version: str | None = None) -> set[str]:
    return {
        rid
        for rid, r in data.facts.rollouts.items()
        if r["succeeded"] and (version is None or triplet_version(r) == version)
    }


# ---- parsing --------------------------------------------------------------------------------------
def test_times_and_resources_parse_or_fail_clearly() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert parse_time("90s", now) == now - timedelta(seconds=90)
    assert parse_time("24h", now) == parse_time("1d", now) == now - timedelta(days=1)
    assert parse_time("2w", now) == now - timedelta(weeks=2)
    assert parse_time("now", now) == now
    assert parse_time("2025-05-01T08:30", now) == datetime(2025, 5, 1, 8, 30, tzinfo=UTC)
    assert parse_time("2025-05-01T10:30+02:00", now) == datetime(2025, 5, 1, 8, 30, tzinfo=UTC)
    for bad in ("yesterday", "5 parsecs", ""):
        with pytest.raises(ValueError, match="not a time"):
            parse_time(bad, now)
    assert parse_resource("support_prompt") == ("support_prompt", None)
    assert (
        parse_resource("support_prompt:2") == parse_resource("support_prompt:v2") == ("support_prompt", "2")
    )
    for bad in (":2", "support_prompt:", " "):
        with pytest.raises(ValueError, match="NAME or NAME:VERSION"):
            parse_resource(bad)
    assert redact_dsn("https://analyst:s3cret@ch.example:8443/db?password=x") == "https://ch.example:8443/db"
    assert redact_dsn("chdb:///var/lib/agentstream/clickhouse") == "chdb:///var/lib/agentstream/clickhouse"


# ---- the report -----------------------------------------------------------------------------------
def test_report_figures_per_version_match_the_scenario(analytics_data: AnalyticsData) -> None:
    report = EvaluationReport(
        analytics_data.client(),
        since=datetime.fromtimestamp(analytics_data.facts.started_at, UTC) - timedelta(minutes=5),
    )
    groups = {g.group: g for g in report.groups}
    assert sorted(groups) == [f"{RESOURCE}:1", f"{RESOURCE}:2"]
    for version in ("1", "2"):
        expected, figures = expected_version(analytics_data.facts, version), groups[f"{RESOURCE}:{version}"]
        assert (figures.rollouts, figures.succeeded, figures.failed) == (
            expected["rollouts"],
            expected["succeeded"],
            expected["failed"],
        )
        assert figures.success_rate == pytest.approx(expected["success_rate"])
        assert figures.handoff_rate == pytest.approx(expected["handoff_rate"])
        assert figures.reward_mean == pytest.approx(reward_mean(analytics_data, version))
        assert (figures.input_tokens, figures.output_tokens) == (
            expected["input_tokens"],
            expected["output_tokens"],
        )
        assert figures.cost == pytest.approx(expected["cost"])
        assert figures.llm_calls == expected["rollouts"]
        assert 0 < figures.latency_p50_ms <= figures.latency_p95_ms <= figures.latency_p99_ms
        causes = Counter(r["cause"] for r in analytics_data.facts.of_version(version) if r["cause"])
        assert report.failure_causes[f"{RESOURCE}:{version}"] == dict(causes)
    # the same formulas as the version_summary view, over all time here
    summary = (
        analytics_data.client()
        .query(
            "SELECT resource_version, success_rate, reward_mean, handoff_rate, latency_p99_ms, cost FROM version_summary"
        )
        .result_rows
    )
    for version, success_rate, mean, handoff_rate, p99, cost in summary:
        figures = groups[f"{RESOURCE}:{version}"]
        assert (
            figures.success_rate,
            figures.reward_mean,
            figures.handoff_rate,
            figures.latency_p99_ms,
        ) == pytest.approx((success_rate, mean, handoff_rate, p99))
        assert figures.cost == pytest.approx(cost)
    # the scenario ran within seconds: the smallest bucket, one point per version
    assert report.bucket_seconds == 1
    assert {b.group for b in report.timeline} == set(groups)
    assert sum(b.rollouts for b in report.timeline) == 40
    assert sum(b.cost for b in report.timeline) == pytest.approx(
        2 * expected_version(analytics_data.facts, "1")["cost"]
    )


@pytest.mark.parametrize("by, group", [("task_type", "(none)"), ("mode", "train"), ("model", MODEL)])
def test_report_by_other_dimensions_counts_each_rollout_once(
    analytics_data: AnalyticsData, by: str, group: str
) -> None:
    report = EvaluationReport(analytics_data.client(), by=by)
    [figures] = report.groups
    v1, v2 = (expected_version(analytics_data.facts, v) for v in ("1", "2"))
    assert figures.group == group
    assert (figures.rollouts, figures.succeeded) == (40, v1["succeeded"] + v2["succeeded"])
    assert figures.llm_calls == 40
    assert figures.cost == pytest.approx(v1["cost"] + v2["cost"])
    assert sum(report.failure_causes[group].values()) == v1["failed"] + v2["failed"]


def test_report_filters_and_refuses_bad_input(analytics_data: AnalyticsData) -> None:
    client = analytics_data.client()
    only_v2 = EvaluationReport(client, resource=f"{RESOURCE}:2")
    assert [(g.group, g.rollouts) for g in only_v2.groups] == [(f"{RESOURCE}:2", 20)]
    later = datetime.fromtimestamp(analytics_data.facts.ended_at, UTC) + timedelta(hours=1)
    empty = EvaluationReport(client, since=later)
    assert empty.groups == [] and empty.span is None and empty.failure_causes == {}
    assert EvaluationReport(client, resource="no_such_resource").groups == []
    with pytest.raises(ValueError, match="cannot group by"):
        EvaluationReport(client, by="resource_version; DROP TABLE spans")
    with pytest.raises(ValueError, match="must be before"):
        EvaluationReport(client, since=later, until=later - timedelta(days=1))


def test_report_html_is_self_contained_with_figures_plots_and_failure_causes(
    analytics_data: AnalyticsData, tmp_path: Path
) -> None:
    path = EvaluationReport(analytics_data.client()).write_html(tmp_path / "nested" / "report.html")
    html = path.read_text()
    summary = html[html.index('id="summary"') : html.index("</table>", html.index('id="summary"'))]
    for version, rate, handoff in (("1", "50.0%", "10.0%"), ("2", "75.0%", "25.0%")):
        row = re.search(rf"<tr>\s*<td>{RESOURCE}:{version}</td>(.*?)</tr>", summary, re.DOTALL)
        assert row is not None, version
        cells = re.findall(r"<td>(.*?)</td>", row.group(1))
        assert cells[:6] == [
            "20",
            str(expected_version(analytics_data.facts, version)["succeeded"]),
            str(expected_version(analytics_data.facts, version)["failed"]),
            rate,
            f"{reward_mean(analytics_data, version):.3f}",
            handoff,
        ]
    images = re.findall(r'<img src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)"', html)
    assert [alt for _, alt in images] == [
        "Success rate",
        "Reward (mean)",
        "Latency p50 (solid) and p95 (dashed)",
        "Cost",
        "Failure causes per resource_version",
    ]
    for encoded, _ in images:
        assert base64.b64decode(encoded).lstrip().startswith((b"<?xml", b"<svg"))
    causes = html[html.index('id="failure-causes"') :]
    header = re.findall(r"<th>(.*?)</th>", causes[: causes.index("</thead>")])
    assert header == [
        "resource_version",
        "llm_error",
        "parse_error",
        "prompt_drift",
        "task_failed",
        "tool_error",
        "total",
    ]
    v2_row = re.search(rf"<td>{RESOURCE}:2</td>(.*?)</tr>", causes, re.DOTALL)
    assert re.findall(r"<td>(\d+)</td>", v2_row.group(1)) == ["0", "0", "0", "5", "0", "5"]
    # nothing fetched when the file is opened: no scripts, stylesheets or images from elsewhere
    assert not re.search(r"(src|href)=\"(?!data:)", html)


def test_report_cli_prints_the_table_and_writes_the_html(
    analytics_data: AnalyticsData, tmp_path: Path
) -> None:
    done = cli(
        analytics_data,
        "report",
        "--since",
        "1h",
        "--by",
        "resource_version",
        "--html",
        "out.html",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert f"{RESOURCE}:1" in done.stdout and "50.0%" in done.stdout and "75.0%" in done.stdout
    assert "HTML report: out.html" in done.stdout
    assert "75.0%" in (tmp_path / "out.html").read_text()
    refused = cli(analytics_data, "report", "--by", "colour", cwd=tmp_path)
    assert refused.returncode == 2 and "cannot group by 'colour'" in refused.stderr
    refused = cli(analytics_data, "report", "--since", "last tuesday", cwd=tmp_path)
    assert refused.returncode == 2 and "not a time" in refused.stderr


# ---- the export -----------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_lineage(rows: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Every row has the lineage columns and the export's id and window; returns the lineage file."""
    lineage = json.loads(out.with_name(out.name + ".lineage.json").read_text())
    assert lineage["rows"] == len(rows) == sum(v["rows"] for v in lineage["by_resource_version"])
    for row in rows:
        assert set(row) == LINEAGE_COLUMNS
        assert row["export_id"] == lineage["export_id"]
        assert row["rollout_id"].startswith("ro-") and row["attempt_id"].startswith("at-") and row["span_id"]
    return lineage


def test_export_jsonl_with_resource_and_reward_filters(analytics_data: AnalyticsData, tmp_path: Path) -> None:
    out = tmp_path / "sft.jsonl"
    done = cli(
        analytics_data,
        "export",
        "triplets",
        "--out",
        str(out),
        "--format",
        "jsonl",
        "--resource",
        f"{RESOURCE}:2",
        "--min-reward",
        "1",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rows = read_jsonl(out)
    assert {r["rollout_id"] for r in rows} == succeeded_rollouts(analytics_data, "2") and len(rows) == 15
    assert all(
        r["reward"] >= 1 and r["resource_version"] == "2" and r["resource_name"] == RESOURCE for r in rows
    )
    assert all(r["model"] == MODEL and r["mode"] == "train" for r in rows)
    for row in rows:
        assert row["prompt_text"].startswith("Route the ticket. v2\nTicket: My order")
        assert json.loads(row["prompt"])[0]["parts"][0]["content"] == row["prompt_text"]
        assert row["response_text"] == "create_ticket(queue='shipping')"
    lineage = check_lineage(rows, out)
    created = sorted(r["created_at"] for r in rows)
    # no --since/--until: the window is the rows' own span
    assert {(r["window_start"], r["window_end"]) for r in rows} == {(created[0], created[-1])}
    assert lineage["filters"]["resource"] == f"{RESOURCE}:2" and lineage["filters"]["min_reward"] == 1
    [counts] = lineage["by_resource_version"]
    assert (counts["resource_name"], counts["resource_version"], counts["rows"], counts["reward_mean"]) == (
        RESOURCE,
        "2",
        15,
        1.0,
    )
    assert lineage["window"] == {
        "start": rows[0]["window_start"].replace("Z", "+00:00"),
        "end": rows[0]["window_end"].replace("Z", "+00:00"),
    }
    assert lineage["source"]["dsn"] == analytics_data.settings.default_clickhouse_dsn
    assert "15 triplet(s)" in done.stdout
    again = cli(analytics_data, "export", "triplets", "--out", str(out), "--format", "jsonl", cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr and len(read_jsonl(out)) == 15


def test_export_parquet_is_written_by_clickhouse_and_reads_back(
    analytics_data: AnalyticsData, tmp_path: Path
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "sft.parquet"
    done = cli(
        analytics_data,
        "export",
        "triplets",
        "--out",
        str(out),
        "--format",
        "parquet",
        "--resource",
        RESOURCE,
        "--min-reward",
        "1",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rows = pq.read_table(out).to_pylist()
    assert {r["rollout_id"] for r in rows} == succeeded_rollouts(analytics_data) and len(rows) == 25
    assert Counter(r["resource_version"] for r in rows) == {"1": 10, "2": 15}
    lineage = check_lineage(rows, out)
    assert {v["resource_version"]: v["rows"] for v in lineage["by_resource_version"]} == {"1": 10, "2": 15}
    assert all(isinstance(r["created_at"], datetime) and r["created_at"].tzinfo is not None for r in rows)


def test_export_hf_dataset_with_a_time_window(analytics_data: AnalyticsData, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    client = analytics_data.client()
    created = [
        row[0]
        for row in client.query(
            "SELECT created_at FROM triplets FINAL WHERE resource_version = '1' AND response != '[]' ORDER BY created_at"
        ).result_rows
    ]
    # v1's LLM calls that answered: all v1 rollouts but the failed LLM calls and the drifted ones (v2's)
    answered_v1 = [
        r for r in analytics_data.facts.of_version("1") if r["cause"] not in ("llm_error", "prompt_drift")
    ]
    assert len(created) == len(answered_v1) == 16
    until = created[9].replace(tzinfo=UTC)
    out = tmp_path / "sft-hf"
    done = cli(
        analytics_data,
        "export",
        "triplets",
        "--out",
        str(out),
        "--format",
        "hf",
        "--resource",
        f"{RESOURCE}:1",
        "--until",
        until.isoformat(),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    dataset = datasets.load_from_disk(str(out))
    rows = dataset.to_list()
    assert len(rows) == 10 and all(r["created_at"] <= until for r in rows)
    assert all(r["resource_version"] == "1" and r["response_text"] for r in rows)
    check_lineage(rows, out)
    # --until given: it is the window's end; the start is the first row's
    assert {r["window_end"] for r in rows} == {until}
    assert {r["window_start"] for r in rows} == {created[0].replace(tzinfo=UTC)}
    facts = analytics_data.facts.rollouts
    assert all(r["reward"] == facts[r["rollout_id"]]["reward"] for r in rows)


def _copy_triplets(source: Any, target: Any) -> None:
    columns = [c for c in source.query("SELECT * FROM triplets LIMIT 0").column_names if c != "ingested_at"]
    block = source.raw_query(f"SELECT {', '.join(columns)} FROM triplets", fmt="Native")
    target.raw_insert("triplets", columns, insert_block=block, fmt="Native")


def test_export_takes_the_newest_revision_leaves_out_evaluation_splits_and_reads_one_snapshot(
    analytics_data: AnalyticsData, clickhouse: Any, tmp_path: Path
) -> None:
    migrate(clickhouse)
    clickhouse.command("SYSTEM STOP MERGES triplets")  # a merge would drop the revisions under test
    _copy_triplets(analytics_data.client(), clickhouse)
    ids = [
        row[0]
        for row in clickhouse.query(
            "SELECT triplet_id FROM triplets FINAL WHERE reward >= 1 ORDER BY created_at, triplet_id"
        ).result_rows
    ]
    lowered, val, test, future, withdrawn = ids[:5]

    def revise(triplet_id: str, changes: str, bump: int = 1) -> None:
        clickhouse.command(
            f"INSERT INTO triplets SELECT * REPLACE (version + {bump} AS version, {changes}) FROM triplets FINAL "
            "WHERE triplet_id = {t:String}",
            parameters={"t": triplet_id},
        )

    revise(lowered, "0.0 AS reward")  # a late reward lowered it: the newest revision decides
    revise(val, "'val' AS mode")
    revise(test, "'test' AS mode")
    revise(withdrawn, "true AS retracted")  # its call turned out a judge call: never training data
    # a revision the sink inserts after the export began is not seen: the old one is exported
    revise(future, "0.0 AS reward, now64(6) + INTERVAL 1 HOUR AS ingested_at")
    export = TripletExport(clickhouse, TripletExportConfig(min_reward=1.0), source="chdb:///somewhere")
    result = export.write(tmp_path / "out.jsonl", "jsonl")
    rows = read_jsonl(result.path)
    exported = {r["triplet_id"] for r in rows}
    assert lowered not in exported and val not in exported and test not in exported
    assert withdrawn not in exported
    assert future in exported and next(r for r in rows if r["triplet_id"] == future)["reward"] == 1
    assert len(rows) == result.rows == 25 - 4
    assert len(exported) == len(rows)  # one row per triplet, never one per revision

    only_val = TripletExport(clickhouse, TripletExportConfig(modes=("val",))).write(
        tmp_path / "val.jsonl", "jsonl"
    )
    assert [r["triplet_id"] for r in read_jsonl(only_val.path)] == [val]
    every_mode = TripletExport(clickhouse, TripletExportConfig(min_reward=1.0, modes=("all",)))
    assert every_mode.write(tmp_path / "all.jsonl", "jsonl").rows == 25 - 2
    newest = TripletExport(clickhouse, TripletExportConfig(limit=5)).write(tmp_path / "newest.jsonl", "jsonl")
    limited = read_jsonl(newest.path)
    everything = read_jsonl(TripletExport(clickhouse).write(tmp_path / "everything.jsonl", "jsonl").path)
    assert len(limited) == 5 and [r["triplet_id"] for r in limited] == [
        r["triplet_id"] for r in everything[-5:]
    ]


def test_export_refuses_bad_input(analytics_data: AnalyticsData, tmp_path: Path) -> None:
    for args, message in (
        (["--format", "xml"], "unknown format 'xml'"),
        (["--format", "jsonl", "--resource", ":3"], "NAME or NAME:VERSION"),
        (["--format", "jsonl", "--since", "soon"], "not a time"),
        (["--format", "jsonl", "--since", "1h", "--until", "2h"], "is after until"),
    ):
        done = cli(analytics_data, "export", "triplets", "--out", "x.jsonl", *args, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    assert not (tmp_path / "x.jsonl").exists()
    with pytest.raises(ValueError, match="limit must be at least 1"):
        TripletExportConfig(limit=0)


def test_export_hf_without_datasets_names_the_extra(
    analytics_data: AnalyticsData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        sys.modules, "datasets", None
    )  # what `import datasets` does where it is not installed
    with pytest.raises(RuntimeError, match=r"agentstream\[train\]"):
        TripletExport(analytics_data.client()).write(tmp_path / "hf", "hf")
    assert list(tmp_path.iterdir()) == []
