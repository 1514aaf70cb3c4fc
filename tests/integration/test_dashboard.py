"""The dashboard's pages and JSON API over the analytics scenario's real history (broker -> worker -> sink -> chDB).

Every figure asserted here follows from ``tests/analytics_scenario.py``; the dashboard reads it
through the running sink's query gateway, as it does under ``agentstream up``.
"""

from __future__ import annotations

import html
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
import httpx
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from agentstream.analytics.dashboard import COOKIE, DashboardState, create_app
from agentstream.analytics.dashboard_auth import dashboard_token
from agentstream.deploy.stack import Stack
from agentstream.process.status import StackState
from agentstream.settings import DashboardSettings, Settings
from tests.analytics_scenario import MODEL, RESOURCE, V1_CAUSES, expected_version
from tests.helpers import settings_env, wait_for
from tests.integration.conftest import AnalyticsData

pytestmark = pytest.mark.integration

TOKEN = "s3cret-dashboard-token"


@pytest.fixture(scope="module")
def api(analytics_data: AnalyticsData) -> Iterator[TestClient]:
    with TestClient(create_app(analytics_data.settings), headers=_bearer(analytics_data.settings)) as client:
        yield client


def _bearer(settings: Settings) -> dict[str, str]:
    """The dashboard always needs its token: the configured one or its token file's."""
    return {"Authorization": f"Bearer {dashboard_token(settings)}"}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [row["rollout_id"] for row in response.json()["rows"]]


# ---- rollouts list ------------------------------------------------------------------------------------
def test_rollouts_api_lists_every_rollout_with_its_outcome(
    api: TestClient, analytics_data: AnalyticsData
) -> None:
    facts = analytics_data.facts
    body = api.get("/api/rollouts", params={"limit": 500}).json()
    assert body["total"] == len(facts.rollouts) == 40
    rows = {row["rollout_id"]: row for row in body["rows"]}
    assert set(rows) == set(facts.rollouts)
    for rollout_id, sent in facts.rollouts.items():
        row = rows[rollout_id]
        assert row["status"] == ("succeeded" if sent["succeeded"] else "failed")
        assert row["failure_cause"] == sent["cause"], rollout_id
        assert row["versions"] == [[RESOURCE, sent["version"]]]
        assert row["reward_mean"] == sent["reward"]
        assert row["handed_off"] == (rollout_id in facts.handoffs)
        assert row["cost"] == pytest.approx((sent["input_tokens"] * 1.0 + sent["output_tokens"] * 2.0) / 1e6)
        assert row["mode"] == "train" and row["attempt_count"] == 1
    times = [row["created_at"] for row in body["rows"]]
    assert times == sorted(times, reverse=True)  # newest first by default


def test_filters_narrow_the_list(api: TestClient, analytics_data: AnalyticsData) -> None:
    facts = analytics_data.facts
    failed = {rid for rid, r in facts.rollouts.items() if not r["succeeded"]}
    assert set(_ids(api.get("/api/rollouts", params={"status": "failed", "limit": 500}))) == failed
    v1_failed = {rid for rid in failed if facts.rollouts[rid]["version"] == "1"}
    response = api.get(
        "/api/rollouts", params={"status": "failed", "resource": RESOURCE, "version": "1", "limit": 500}
    )
    assert set(_ids(response)) == v1_failed and len(v1_failed) == 10
    v2 = {rid for rid, r in facts.rollouts.items() if r["version"] == "2"}
    assert set(_ids(api.get("/api/rollouts", params={"version": "2", "limit": 500}))) == v2
    for cause in set(V1_CAUSES):
        assert sorted(_ids(api.get("/api/rollouts", params={"cause": cause, "limit": 500}))) == facts.failing(
            cause
        )
    assert len(_ids(api.get("/api/rollouts", params={"min_reward": 0.5, "limit": 500}))) == 25
    assert set(_ids(api.get("/api/rollouts", params={"max_reward": 0.5, "limit": 500}))) == failed
    assert len(_ids(api.get("/api/rollouts", params={"mode": "train", "limit": 500}))) == 40
    assert _ids(api.get("/api/rollouts", params={"mode": "prod"})) == []
    assert _ids(api.get("/api/rollouts", params={"resource": "another_prompt"})) == []
    # time range: the scenario ran between started_at and ended_at
    since, until = _iso(facts.started_at - 1), _iso(facts.ended_at + 1)
    assert len(_ids(api.get("/api/rollouts", params={"since": since, "until": until, "limit": 500}))) == 40
    assert _ids(api.get("/api/rollouts", params={"until": _iso(facts.started_at - 1)})) == []
    assert _ids(api.get("/api/rollouts", params={"since": _iso(facts.ended_at + 1)})) == []
    # the scenario's midpoint splits the rollouts in two non-empty halves that make up the whole
    first = api.get("/api/rollouts", params={"limit": 500, "order": "asc"}).json()["rows"]
    middle = first[20]["created_at"]
    before = set(_ids(api.get("/api/rollouts", params={"until": middle, "limit": 500})))
    after = set(_ids(api.get("/api/rollouts", params={"since": middle, "limit": 500})))
    assert len(before) == 20 and before | after == set(facts.rollouts) and not before & after
    assert len(_ids(api.get("/api/rollouts", params={"since": "7d", "limit": 500}))) == 40  # an age
    # combined: failed v2 rollouts are the task_failed ones, all handed to a human
    rows = api.get("/api/rollouts", params={"status": "failed", "version": "2"}).json()["rows"]
    assert {r["failure_cause"] for r in rows} == {"task_failed"} and all(r["handed_off"] for r in rows)


def test_sorting_and_pagination(api: TestClient, analytics_data: AnalyticsData) -> None:
    seen: list[str] = []
    for offset in range(0, 40, 15):
        page = api.get("/api/rollouts", params={"limit": 15, "offset": offset, "order": "asc"}).json()
        assert page["total"] == 40
        seen += [row["rollout_id"] for row in page["rows"]]
    assert len(seen) == 40 and set(seen) == set(analytics_data.facts.rollouts)
    past_the_end = api.get("/api/rollouts", params={"limit": 10, "offset": 100}).json()
    assert past_the_end["rows"] == [] and past_the_end["total"] == 40
    ascending = api.get("/api/rollouts", params={"limit": 500, "order": "asc"}).json()["rows"]
    assert [r["rollout_id"] for r in ascending] == seen  # pages in created_at order, no overlap
    by_latency = [
        r["latency_ms"]
        for r in api.get("/api/rollouts", params={"sort": "latency", "limit": 500}).json()["rows"]
    ]
    assert by_latency == sorted(by_latency, reverse=True)
    by_reward = [
        r["reward_mean"]
        for r in api.get("/api/rollouts", params={"sort": "reward", "order": "asc", "limit": 500}).json()[
            "rows"
        ]
    ]
    assert by_reward == sorted(by_reward) and by_reward[0] == 0.0 and by_reward[-1] == 1.0


def test_rollouts_page_renders_rows_filters_and_pager(api: TestClient, analytics_data: AnalyticsData) -> None:
    facts = analytics_data.facts
    page = api.get("/rollouts", params={"status": "failed", "limit": 10})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "15 rollouts" in text and "showing 1–10" in text
    assert text.count('class="status-failed"') == 10 and 'class="status-succeeded"' not in text
    assert '<option value="failed" selected>' in text  # the form keeps the filter
    assert "offset=10" in text and "status=failed" in text  # the next page keeps the filters
    assert api.get("/").text.count("<tr class=") == 40  # `/` is the list too
    tool_error = facts.failing("tool_error")[0]
    listed = api.get("/rollouts", params={"cause": "tool_error"}).text
    assert f'href="/rollouts/{tool_error}"' in listed and "queue must be one of billing" in listed


def test_bad_filters_are_rejected_with_a_message(api: TestClient) -> None:
    cases = {
        "status=bogus": "status",
        "min_reward=abc": "min_reward",
        "since=yesterday": "not a time",
        "limit=0": "limit",
        "limit=100000": "limit",
        "sort=rollout_id": "sort",
        "order=sideways": "order",
        "min_reward=1&max_reward=0": "min_reward must not exceed max_reward",
        "since=2030-01-01&until=2020-01-01": "since must be before until",
        "colour=red": "colour",
        "cause=bad_luck": "cause",
        "min_reward=nan": "min_reward",
    }
    for query, message in cases.items():
        response = api.get(f"/api/rollouts?{query}")
        assert response.status_code == 400, query
        assert response.json()["error"] == "Bad request" and message in response.json()["detail"], (
            query,
            response.text,
        )
    page = api.get("/rollouts?status=bogus")
    assert page.status_code == 400 and "status" in page.text and "<html" in page.text


def test_injection_attempts_are_bound_or_rejected(api: TestClient, analytics_data: AnalyticsData) -> None:
    client = analytics_data.client()
    spans_before = client.query("SELECT count() FROM spans").result_rows[0][0]
    # names are validated: a quote cannot reach the query at all
    response = api.get("/api/rollouts", params={"resource": "support_prompt' OR 1=1 --"})
    assert response.status_code == 400 and "resource" in response.json()["detail"]
    response = api.get("/api/rollouts", params={"mode": "train' OR '1'='1"})
    assert response.status_code == 400
    # free text travels as a bound parameter: it matches nothing and runs nothing
    for attempt in ("x' OR '1'='1", "'; DROP TABLE spans; --", "ro-1') UNION SELECT * FROM rewards --"):
        assert api.get(f"/api/rollouts/{attempt}").status_code == 404
        assert api.get(f"/rollouts/{attempt}").status_code == 404
        assert api.get(f"/api/resources/{attempt}").status_code == 404
        ab = api.get("/api/ab", params={"resource": attempt})
        assert ab.status_code == 200 and ab.json()["versions"] == [] and ab.json()["resource"] == attempt
        series = api.get("/api/ab/series", params={"resource": attempt})
        assert series.status_code == 200 and series.json()["series"] == {}
    assert client.query("SELECT count() FROM spans").result_rows[0][0] == spans_before
    assert api.get("/api/rollouts").json()["total"] == 40


# ---- rollout detail ------------------------------------------------------------------------------------
def _rows(detail: dict[str, Any], row: str = "span") -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in detail["waterfall"]["rows"] if r["row"] == row}


def test_waterfall_of_a_tool_error_shows_the_arguments_and_the_error(
    api: TestClient, analytics_data: AnalyticsData
) -> None:
    facts = analytics_data.facts
    rollout_id = facts.failing("tool_error")[0]
    sent = facts.rollouts[rollout_id]
    detail = api.get(f"/api/rollouts/{rollout_id}").json()
    header = detail["rollout"]
    assert header["status"] == "failed" and header["failure_cause"] == "tool_error"
    assert header["resources"] == {RESOURCE: "1"} and header["input_tokens"] == sent["input_tokens"]
    assert header["cost"] == pytest.approx((sent["input_tokens"] + 2 * sent["output_tokens"]) / 1e6)
    assert "queue must be one of" in header["error"]
    assert [a["status"] for a in detail["attempts"]] == ["failed"]

    rows = detail["waterfall"]["rows"]
    assert [(r["row"], r["name"], r["depth"]) for r in rows] == [
        ("span", "rollout", 0),
        ("span", "route", 1),
        ("span", "create_ticket", 1),
        ("reward", "routing", 1),
    ]
    spans = _rows(detail)
    tool = spans["create_ticket"]
    assert tool["kind"] == "tool" and tool["status"] == "error" and tool["error_type"] == "ValueError"
    assert '"queue": null' in tool["tool_arguments"] and sent["ticket_id"] in tool["tool_arguments"]
    assert "queue must be one of billing, shipping, technical, account" in tool["error"]
    assert "raise ValueError" in tool["stacktrace"]
    llm = spans["route"]
    assert llm["kind"] == "llm" and llm["model"] == MODEL and llm["resource"] == f"{RESOURCE} v1"
    assert "Route the ticket. v1" in llm["input_messages"][0]["parts"][0]["text"]
    assert llm["output_messages"][0]["parts"][0]["text"] == "create_ticket(queue='shipping')"
    # bars: the tool call starts after the LLM call, and both lie inside the root's bar
    root = spans["rollout"]
    assert root["offset_pct"] == 0 and root["width_pct"] == pytest.approx(100, abs=0.5)
    assert llm["offset_pct"] < tool["offset_pct"] and tool["offset_pct"] + tool["width_pct"] <= 100.0001
    assert detail["waterfall"]["errors"] == 2  # the tool call and the rollout it failed
    reward = _rows(detail, "reward")["routing"]
    assert reward["value"] == 0.0 and reward["late_ms"] == 0
    assert [w["name"] for w in detail["rewards"]] == ["routing"]

    page = api.get(f"/rollouts/{rollout_id}")
    assert page.status_code == 200
    text = page.text
    assert text.count('class="wf-row') == 4 and 'st-error" data-span-id="' in text
    shown = html.unescape(text)
    assert '"queue": null' in shown and "queue must be one of billing, shipping, technical, account" in shown
    assert "Route the ticket. v1" in shown and 'id="failure-cause">tool_error' in shown
    # recorded text is escaped, never markup
    assert "create_ticket(queue=&#39;shipping&#39;)" in text and "create_ticket(queue='shipping')" not in text


def test_every_failure_cause_is_visible_in_its_waterfall(
    api: TestClient, analytics_data: AnalyticsData
) -> None:
    facts = analytics_data.facts
    llm_error = api.get(f"/api/rollouts/{facts.failing('llm_error')[0]}").json()
    route = _rows(llm_error)["route"]
    assert route["status"] == "error" and "model server closed the connection" in route["error"]
    assert route["output_messages"] is None and "create_ticket" not in _rows(llm_error)
    assert llm_error["rollout"]["failure_cause"] == "llm_error"

    drift = api.get(f"/api/rollouts/{facts.failing('prompt_drift')[0]}").json()
    assert (
        drift["rollout"]["resources"] == {RESOURCE: "1"}
        and drift["rollout"]["failure_cause"] == "prompt_drift"
    )
    assert _rows(drift)["route"]["resource"] == f"{RESOURCE} v2"  # the LLM call used another version
    assert "v2" in api.get(f"/rollouts/{facts.failing('prompt_drift')[0]}").text

    parse = api.get(f"/api/rollouts/{facts.failing('parse_error')[0]}").json()
    assert parse["rollout"]["failure_cause"] == "parse_error"
    assert "could not parse the model output" in parse["rollout"]["error"]
    assert _rows(parse)["create_ticket"]["status"] == "ok"  # the tool ran; the output was the problem

    handed = sorted(facts.handoffs)[0]
    detail = api.get(f"/api/rollouts/{handed}").json()
    assert detail["rollout"]["failure_cause"] == "task_failed" and detail["rollout"]["handed_off"] is True
    assert detail["handoff"]["handed_to"] == "human" and detail["handoff"]["reason"] == "escalated to a human"
    resolution = _rows(detail, "reward")["resolution"]
    assert resolution["source"] == "business_event" and resolution["feedback"] == "escalated to a human"
    assert resolution["late_ms"] > 0  # reported after the rollout's last span
    assert '"billing"' in _rows(detail)["create_ticket"]["tool_arguments"]
    assert "escalated to a human" in api.get(f"/rollouts/{handed}").text

    succeeded = next(rid for rid, r in facts.rollouts.items() if r["succeeded"])
    ok = api.get(f"/api/rollouts/{succeeded}").json()
    assert ok["rollout"]["failure_cause"] == "" and ok["waterfall"]["errors"] == 0
    assert '{\n  "ok": true\n}' == _rows(ok)["create_ticket"]["tool_result"]


def test_unknown_rollout_is_404(api: TestClient) -> None:
    response = api.get("/api/rollouts/ro-does-not-exist")
    assert response.status_code == 404 and response.json() == {
        "error": "Not found",
        "detail": "no rollout 'ro-does-not-exist'",
    }
    page = api.get("/rollouts/ro-does-not-exist")
    assert page.status_code == 404 and "no rollout" in html.unescape(page.text)
    assert api.get("/no/such/page").status_code == 404


# ---- resources ----------------------------------------------------------------------------------------
def test_resources_versions_labels_and_history(api: TestClient) -> None:
    listed = api.get("/api/resources").json()["resources"]
    assert [(r["resource_name"], r["versions"], r["latest_version"]) for r in listed] == [(RESOURCE, 2, 2)]
    assert listed[0]["labels"]["production"] == 2 and listed[0]["kind"] == "prompt_template"
    assert RESOURCE in api.get("/resources").text

    detail = api.get(f"/api/resources/{RESOURCE}").json()
    versions = {v["version"]: v for v in detail["versions"]}
    assert versions[1]["template"].startswith("Route the ticket.\n") and versions[1]["parent_version"] is None
    assert (
        versions[2]["template"].startswith("Route the ticket to its queue.")
        and versions[2]["parent_version"] == 1
    )
    assert detail["labels"] == {"production": 2, "candidate": 2}
    assert "production" in versions[2]["labels"] and versions[1]["labels"] == []
    history = [
        (m["label"], m["previous_version"], m["version"], m["reason"]) for m in detail["label_history"]
    ]
    assert history[0] == ("production", 1, 2, "promoted: candidate beat production")  # newest first
    assert ("production", None, 1, "seed prompt") in history and (
        "candidate",
        None,
        2,
        "APO winner",
    ) in history

    page = html.unescape(api.get(f"/resources/{RESOURCE}").text)
    assert "promoted: candidate beat production" in page and "production → v2" in page
    assert "-Route the ticket." in page and "+Route the ticket to its queue." in page  # newest vs its parent
    assert api.get("/api/resources/no_such_prompt").status_code == 404
    assert api.get("/resources/no_such_prompt").status_code == 404


def test_diff_between_two_versions(api: TestClient) -> None:
    diff = api.get(f"/api/resources/{RESOURCE}/diff", params={"a": 1, "b": 2}).json()
    assert diff["changed"] is True
    changes = [(line["kind"], line["text"]) for line in diff["lines"] if line["kind"] in ("add", "del")]
    assert changes == [("del", "-Route the ticket."), ("add", "+Route the ticket to its queue.")]
    reverse = api.get(f"/api/resources/{RESOURCE}/diff", params={"a": 2, "b": 1}).json()
    assert [line["kind"] for line in reverse["lines"] if line["kind"] in ("add", "del")] == ["del", "add"]
    same = api.get(f"/api/resources/{RESOURCE}/diff", params={"a": 2, "b": 2}).json()
    assert same == {"name": RESOURCE, "a": 2, "b": 2, "changed": False, "lines": []}
    page = api.get(f"/resources/{RESOURCE}", params={"a": 2, "b": 1}).text
    assert '<span class="d-add">+Route the ticket.</span>' in page
    assert api.get(f"/api/resources/{RESOURCE}/diff", params={"a": 1}).status_code == 400
    assert api.get(f"/api/resources/{RESOURCE}/diff", params={"a": 1, "b": "two"}).status_code == 400
    missing = api.get(f"/api/resources/{RESOURCE}/diff", params={"a": 1, "b": 9})
    assert missing.status_code == 404 and "no version 9" in missing.json()["detail"]


# ---- A/B ---------------------------------------------------------------------------------------------------
def test_ab_view_per_version(api: TestClient, analytics_data: AnalyticsData) -> None:
    facts = analytics_data.facts
    ab = api.get("/api/ab", params={"resource": RESOURCE}).json()
    assert ab["resources"] == [RESOURCE] and ab["labels"]["production"] == 2
    versions = {v["version"]: v for v in ab["versions"]}
    assert set(versions) == {"1", "2"}
    for version in ("1", "2"):
        expected, got = expected_version(facts, version), versions[version]
        for key in ("rollouts", "succeeded", "failed", "input_tokens", "output_tokens"):
            assert got[key] == expected[key], (version, key)
        assert got["success_rate"] == pytest.approx(expected["success_rate"])
        assert got["handoff_rate"] == pytest.approx(expected["handoff_rate"])
        assert got["cost"] == pytest.approx(expected["cost"])
        assert got["latency_p50_ms"] <= got["latency_p95_ms"] <= got["latency_p99_ms"]
    assert (versions["1"]["succeeded"], versions["2"]["succeeded"]) == (10, 15)
    assert "production" in versions["2"]["labels"] and versions["1"]["labels"] == []
    # the same figures as the version_summary view
    summary = (
        analytics_data.client()
        .query(
            "SELECT resource_version, success_rate, reward_mean, latency_p99_ms FROM version_summary "
            "WHERE resource_name = {r:String}",
            parameters={"r": RESOURCE},
        )
        .result_rows
    )
    for version, success_rate, reward_mean, p99 in summary:
        assert versions[version]["success_rate"] == pytest.approx(success_rate)
        assert versions[version]["reward_mean"] == pytest.approx(reward_mean)
        assert versions[version]["latency_p99_ms"] == pytest.approx(p99)
    assert ab["decisions"] == []  # the scenario promoted by hand, not through the promoter

    default = api.get("/api/ab").json()  # no resource named: the first labelled one
    assert default["resource"] == RESOURCE and len(default["versions"]) == 2
    future = api.get("/api/ab", params={"resource": RESOURCE, "since": _iso(facts.ended_at + 60)}).json()
    assert future["versions"] == []
    past = api.get("/api/ab", params={"resource": RESOURCE, "since": _iso(facts.started_at - 60)}).json()
    assert [v["rollouts"] for v in past["versions"]] == [20, 20]
    assert api.get("/api/ab", params={"since": "last tuesday"}).status_code == 400

    page = api.get("/ab", params={"resource": RESOURCE}).text
    assert "50.0%" in page and "75.0%" in page and 'data-refresh="5.0"' in page
    assert 'id="ab-live"' in page and "/static/ab.js" in page


def test_ab_series_per_window(api: TestClient, analytics_data: AnalyticsData) -> None:
    series = api.get("/api/ab/series", params={"resource": RESOURCE}).json()["series"]
    assert set(series) == {"1", "2"}
    totals = {
        v: (sum(w["rollouts"] for w in ws), sum(w["succeeded"] for w in ws)) for v, ws in series.items()
    }
    assert totals == {"1": (20, 10), "2": (20, 15)}
    for windows in series.values():
        starts = [w["window_start"] for w in windows]
        assert starts == sorted(starts) and all(w["window_end"] > w["window_start"] for w in windows)
    later = _iso(analytics_data.facts.ended_at + 120)
    assert api.get("/api/ab/series", params={"resource": RESOURCE, "since": later}).json()["series"] == {}
    assert api.get("/api/ab/series").status_code == 400


def test_static_files_health_and_headers(api: TestClient) -> None:
    health = api.get("/healthz")
    assert health.status_code == 200 and health.json() == {"ok": True, "clickhouse": "ok"}
    assert "fetch(" in api.get("/static/ab.js").text and ".waterfall" in api.get("/static/style.css").text
    headers = api.get("/rollouts").headers
    assert (
        "script-src 'self'" in headers["content-security-policy"]
        and headers["x-content-type-options"] == "nosniff"
    )


# ---- auth ------------------------------------------------------------------------------------------------
def test_token_auth(analytics_data: AnalyticsData) -> None:
    settings = analytics_data.settings.model_copy(
        update={"dashboard": DashboardSettings(token=SecretStr(TOKEN))}
    )
    with TestClient(create_app(settings), follow_redirects=False) as client:
        assert client.get("/healthz").status_code == 200  # probes need no token
        assert client.get("/static/style.css").status_code == 200
        denied = client.get("/api/rollouts")
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/api/rollouts", headers={"Authorization": "Bearer wrong"}).status_code == 401
        allowed = client.get("/api/rollouts", headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200 and allowed.json()["total"] == 40
        login = client.get("/rollouts?status=failed")
        assert login.status_code == 401 and 'name="token"' in login.text and "15 rollouts" not in login.text

        assert client.get(f"/rollouts?status=failed&token=wrong{TOKEN}").status_code == 401
        visit = client.get(f"/rollouts?status=failed&token={TOKEN}")
        assert visit.status_code == 303 and visit.headers["location"] == "/rollouts?status=failed"
        cookie = visit.cookies[COOKIE]
        assert cookie and TOKEN not in cookie  # the cookie holds a session id, not the token
        page = client.get("/rollouts?status=failed")  # the client keeps the cookie
        assert page.status_code == 200 and "15 rollouts" in page.text
        assert (
            client.get("/api/ab").status_code == 200
        )  # the cookie also opens the API (the live A/B fetches)

        client.cookies.clear()
        assert client.get("/api/rollouts").status_code == 401
        wrong = client.post("/login", data={"token": "nope", "next": "/ab"})
        assert wrong.status_code == 401 and "not right" in wrong.text
        signed_in = client.post("/login", data={"token": TOKEN, "next": "/ab"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ab"
        assert client.get("/ab").status_code == 200
        client.cookies.clear()
        offsite = client.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert offsite.headers["location"] == "/"  # no open redirect
        assert client.get("/logout").status_code == 303
    with TestClient(create_app(analytics_data.settings)) as no_token_set:
        assert no_token_set.get("/api/rollouts").status_code == 401  # no token configured: the file's
        token = (analytics_data.settings.data_dir / "secrets" / "dashboard.token").read_text().strip()
        allowed = no_token_set.get("/api/rollouts", headers={"Authorization": f"Bearer {token}"})
        assert allowed.status_code == 200


# ---- ClickHouse not (yet) reachable ----------------------------------------------------------------------
def test_503_until_the_gateway_is_up_then_it_recovers(analytics_data: AnalyticsData, tmp_path: Path) -> None:
    # a stack runs for this data dir but its sink has not started the gateway: never open chDB directly
    waiting = Settings(data_dir=tmp_path / "data")
    StackState(pid=os.getpid()).save(waiting.data_dir)
    with TestClient(create_app(waiting), headers=_bearer(waiting)) as client:
        response = client.get("/api/rollouts")
        assert response.status_code == 503 and response.headers["retry-after"] == "2"
        assert "query gateway" in response.json()["detail"]
        page = client.get("/ab")
        assert page.status_code == 503 and "not reachable yet" in page.text
        assert client.get("/healthz").json()["clickhouse"].startswith("unavailable")
    assert not (tmp_path / "data" / "clickhouse").exists()  # the directory was never opened

    # the client is made on demand: the first request fails, the next one gets through
    attempts: list[int] = []

    def flaky_factory() -> Any:
        attempts.append(1)
        if len(attempts) == 1:  # a gateway that is not there (yet)
            return clickhouse_connect.get_client(host="127.0.0.1", port=_closed_port(), connect_timeout=2)
        return analytics_data.client()

    app = create_app(analytics_data.settings, client_factory=flaky_factory)
    with TestClient(app, headers=_bearer(analytics_data.settings)) as client:
        first = client.get("/api/rollouts")
        assert first.status_code == 503
        assert client.get("/api/rollouts").json()["total"] == 40
    assert len(attempts) == 2


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- serving -------------------------------------------------------------------------------------------
def test_cli_serves_the_dashboard(analytics_data: AnalyticsData) -> None:
    """``agentstream dashboard`` in its own process, reading through the sink's gateway."""
    env = settings_env(analytics_data.settings)
    env["AGENTSTREAM_DASHBOARD__TOKEN"] = TOKEN
    process = subprocess.Popen(
        [sys.executable, "-m", "agentstream.cli", "dashboard", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        state = wait_for(lambda: DashboardState.load(analytics_data.settings.data_dir), 60)
        assert state is not None and state.pid == process.pid, process.poll()
        health = httpx.get(f"{state.url}/healthz", timeout=10)
        assert health.json() == {"ok": True, "clickhouse": "ok"}
        assert httpx.get(f"{state.url}/api/rollouts", timeout=10).status_code == 401
        failed = httpx.get(
            f"{state.url}/api/rollouts",
            params={"status": "failed"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert failed.json()["total"] == 15
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Dashboard on http://127.0.0.1:" in output
    assert DashboardState.load(analytics_data.settings.data_dir) is None  # it cleaned up after itself


def test_without_a_sink_it_reads_chdb_itself_but_never_holds_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    env = settings_env(settings)
    subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "migrate"], env=env, check=True, capture_output=True
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "agentstream.cli", "dashboard", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        state = wait_for(lambda: DashboardState.load(settings.data_dir), 60)
        assert state is not None, process.poll()
        assert httpx.get(f"{state.url}/api/rollouts", timeout=30).status_code == 401
        httpx_get = _authorized_get(settings)
        empty = httpx_get(f"{state.url}/api/rollouts", timeout=30)
        assert empty.status_code == 200 and empty.json()["total"] == 0
        # between requests another process (a sink starting later) can open the directory
        other = subprocess.run(
            [sys.executable, "-c", "import clickhouse_connect, sys; "
             "print(clickhouse_connect.get_client(dsn='chdb://' + sys.argv[1]).query('SELECT 7').result_rows)",
             str(settings.chdb_path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert other.returncode == 0 and "[(7,)]" in other.stdout, other.stderr[-2000:]
        assert httpx_get(f"{state.url}/api/resources", timeout=30).json() == {"resources": []}
        for path, shown in (
            ("/", "No rollouts match"),
            ("/ab", "No rollout has run"),
            ("/resources", "No resource"),
        ):
            page = httpx_get(f"{state.url}{path}", timeout=30)
            assert page.status_code == 200 and shown in page.text, (path, page.text[-500:])
        assert httpx_get(f"{state.url}/api/ab", timeout=30).json() == {
            "resource": None,
            "versions": [],
            "resources": [],
        }
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


def test_up_runs_the_dashboard_which_waits_for_the_sink(settings: Settings) -> None:
    settings = settings.model_copy(update={"dashboard": DashboardSettings(port=0)})
    with Stack(settings, workers=0, promoter=False, otlp=False) as stack:
        assert [c.name for c in stack.children] == ["sink", "dashboard"]
        url = wait_for(stack.dashboard_url, 60)
        assert url, (
            (stack.logs / "dashboard.log").read_text() if (stack.logs / "dashboard.log").exists() else ""
        )
        stack.wait_ready()

        httpx_get = _authorized_get(settings)  # the stack handed its dashboard this token file

        def answers() -> bool:  # 503 until the sink serves its gateway, then the (empty) list
            response = httpx_get(f"{url}/api/rollouts", timeout=10)
            assert response.status_code in (200, 503), response.text
            return response.status_code == 200

        assert wait_for(answers, 30)
        assert httpx_get(f"{url}/api/rollouts", timeout=10).json()["total"] == 0
        assert wait_for(lambda: stack.dashboard_url() in stack.members()[-1].detail, 5)


def _authorized_get(settings: Settings) -> Any:
    """``httpx.get`` with the dashboard's token (from its token file) as a bearer header."""
    headers = _bearer(settings)

    def get(url: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(url, headers=headers, **kwargs)

    return get
