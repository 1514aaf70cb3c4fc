"""`agentstream doctor` and the dashboard's "Why no triplet?" panel over a real sink's ClickHouse.

Spans and rewards go SDK -> broker -> sink -> chDB. No stream worker runs: the triplets (and the
rollout states the dashboard lists) are written as rows, so each call's fate is chosen here and
every reason of ``analytics/doctor.py`` can be seen on its own. The same sink also shows that a
``@traced(kind="tool")`` failure fills docs query 8's tool columns.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

import agentstream
from agentstream.analytics.dashboard import create_app
from agentstream.analytics.dashboard_auth import dashboard_token
from agentstream.analytics.doctor import diagnose
from agentstream.cli.app import app
from agentstream.clickhouse.connect import connect
from agentstream.producers.client import AgentStream
from agentstream.schemas import genai
from agentstream.settings import Settings
from agentstream.topics.admin import ensure_topics
from tests.helpers import Broker, SinkProcess, wait_for
from tests.integration.test_analytics_docs import doc_queries

pytestmark = pytest.mark.integration


@dataclass
class Sent:
    """What the agent below recorded: rollout ids and the span id of each named call."""

    mixed: str = ""
    early: str = ""
    tools: str = ""
    spans: dict[str, str] = field(default_factory=dict)
    spans_sent: int = 0
    retracted_column: bool = False


@dataclass
class Landed:
    settings: Settings
    sent: Sent

    def client(self) -> Any:
        return connect(self.settings)


def _llm(rollout: Any, name: str, sent: Sent, **attributes: Any) -> Any:
    span = rollout.span(name, kind="llm", attributes={genai.OPERATION_NAME: "chat", **attributes})
    sent.spans[name] = span.span_id
    return span


MESSAGES = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "hi"}]}])


@agentstream.traced(kind="tool")
def create_ticket(queue: str | None, ticket: str) -> dict[str, str]:
    if queue is None:
        raise ValueError("create_ticket: queue must be one of billing, shipping")
    return {"ticket": ticket, "queue": queue}


def _record(sdk: AgentStream, sent: Sent) -> None:
    with sdk.rollout({"case": "mixed"}) as r:
        sent.mixed = r.rollout_id
        with _llm(r, "chat policy", sent, **{genai.INPUT_MESSAGES: MESSAGES}):
            pass
        with _llm(r, "chat unjoined", sent, **{genai.INPUT_MESSAGES: MESSAGES}):
            pass
        with _llm(r, "chat outer copy", sent, **{genai.RESPONSE_ID: "resp-1"}):
            with _llm(r, "chat inner copy", sent, **{genai.RESPONSE_ID: "resp-1"}):
                pass  # ends first: the copy the joiner keeps
        with r.span("grade", kind="reward"):
            with r.span("rubric", kind="agent"):
                with _llm(r, "chat judge", sent):  # the SDK marks it a judge call
                    pass
        with r.span("check", kind="other") as check:
            with _llm(r, "chat judge unmarked", sent):  # its parent says it evaluates only later
                pass
            check.set_attribute(genai.OPERATION_NAME, genai.OPERATION_EVALUATE)
        with _llm(r, "openinference llm", sent, **{genai.DIALECT: "openinference"}) as span:
            span.set_attribute(genai.NO_CALL_REASON, "no llm.input_messages")
        with r.span("mystery", kind="other", attributes={genai.DIALECT: "unknown"}) as span:
            sent.spans["mystery"] = span.span_id
            span.set_attribute(genai.NO_CALL_REASON, "no attribute of a known dialect")
        with _llm(r, "chat retracted", sent):
            pass
        r.emit_reward(1.0, name="reward")
    with sdk.rollout({"case": "reward first"}) as r:
        sent.early = r.rollout_id
        r.emit_reward(0.5, name="correctness")
        with _llm(r, "chat late", sent, **{genai.INPUT_MESSAGES: MESSAGES}):
            pass
    with sdk.rollout({"case": "tools only"}) as r:
        sent.tools = r.rollout_id
        create_ticket("shipping", ticket="T-1")
        with pytest.raises(ValueError):
            create_ticket(None, ticket="T-2")
    sent.spans_sent = 13 + 2 + 3  # mixed, reward first and tools only, each with its root span


def _insert_triplets(settings: Settings, sent: Sent) -> None:
    """What a worker would have written: triplets for two calls of the mixed rollout (one retracted
    later where the table can say so), and a rollout state so the dashboard lists the rollout."""
    writer = connect(settings, write=True)
    sent.retracted_column = "retracted" in writer.query("SELECT * FROM triplets LIMIT 0").column_names
    now = datetime.now(UTC)
    columns = ["triplet_id", "version", "rollout_id", "attempt_id", "span_id", "step", "prompt_messages"]
    columns += ["response", "reward", "credit_assignment", "created_at", "emitted_at", "_topic_id"]
    columns += ["_partition", "_offset"]
    rows = [
        ["tr-policy", 1, sent.mixed, "", sent.spans["chat policy"], 0, MESSAGES, "[]", None, "", now, now],
        ["tr-policy", 2, sent.mixed, "", sent.spans["chat policy"], 0, MESSAGES, "[]", 1.0, "", now, now],
        ["tr-retracted", 1, sent.mixed, "", sent.spans["chat retracted"], 1, "[]", "[]", 1.0, "", now, now],
    ]
    rows = [[*row, "doctor-test", 0, i] for i, row in enumerate(rows)]
    if sent.retracted_column:
        columns.append("retracted")
        rows = [[*row, row[0] == "tr-retracted" and row[1] == 2] for row in rows]
        rows.append(
            [
                "tr-retracted",
                2,
                sent.mixed,
                "",
                sent.spans["chat retracted"],
                1,
                "[]",
                "[]",
                None,
                "",
                now,
                now,
            ]
            + ["doctor-test", 0, 9, True]
        )
    writer.insert("triplets", rows, column_names=columns)
    writer.insert(
        "rollout_states",
        [[sent.mixed, "succeeded", 1, now, now, "doctor-test", 0, 0]],
        column_names=[
            "rollout_id",
            "status",
            "version",
            "created_at",
            "updated_at",
            "_topic_id",
            "_partition",
            "_offset",
        ],
    )
    writer.close()


@pytest.fixture(scope="module")
def landed(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landed]:
    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers,
        data_dir=tmp_path_factory.mktemp("doctor") / "data",
        topic_prefix=f"d{uuid.uuid4().hex[:10]}.",
        partitions=2,
        sink={"batch_max_seconds": 0.1, "retry_initial_seconds": 0.05, "retry_max_seconds": 0.5},
        sdk={"delivery_timeout_ms": 3000},
        dashboard={"port": 0},
    )
    ensure_topics(settings)
    sink = SinkProcess(settings).start()
    try:
        sent = Sent()
        sdk = AgentStream(settings)
        try:
            _record(sdk, sent)
            assert sdk.flush(10)
        finally:
            sdk.close()
        reader = connect(settings)

        def spans_landed() -> bool:
            spans = reader.query("SELECT count() FROM spans FINAL").result_rows[0][0]
            rewards = reader.query("SELECT count() FROM rewards FINAL").result_rows[0][0]
            return bool(spans == sent.spans_sent and rewards == 2)

        assert wait_for(spans_landed, 60, interval=0.2), sink.log.read_text()[-2000:]
        _insert_triplets(settings, sent)
        yield Landed(settings, sent)
    finally:
        sink.stop()


def _verdicts(report: Any) -> dict[str, tuple[str | None, bool]]:
    return {c.name: (c.reason, c.training) for c in report.calls}


def test_every_call_gets_its_reason(landed: Landed) -> None:
    sent = landed.sent
    report = diagnose(landed.client(), sent.mixed)
    assert report.spans == 13 and report.llm_calls == 8
    assert report.spans_by_kind == {"llm": 8, "agent": 2, "other": 2, "reward": 1}
    assert report.spans_by_dialect == {"sdk": 11, "openinference": 1, "unknown": 1}
    assert report.rewards_by_name["reward"]["count"] == 1
    retracted = "retracted" if sent.retracted_column else "not_joined"
    assert _verdicts(report) == {
        "chat policy": (None, True),
        "chat unjoined": ("not_joined", False),
        "chat inner copy": ("not_joined", False),  # the kept copy: its triplet is simply not there yet
        "chat outer copy": ("duplicate", False),
        "chat judge": ("judge", False),
        "chat judge unmarked": ("judge", False),  # found through its parent
        "openinference llm": ("no_messages", False),
        "mystery": ("unknown_dialect", False),
        "chat retracted": (retracted, not sent.retracted_column),
    }
    [policy] = [c for c in report.calls if c.name == "chat policy"]
    assert (policy.triplet_id, policy.triplet_version, policy.reward) == ("tr-policy", 2, 1.0)
    [outer] = [c for c in report.calls if c.name == "chat outer copy"]
    assert outer.detail == f"kept copy: span {sent.spans['chat inner copy']}"
    [mystery] = [c for c in report.calls if c.name == "mystery"]
    assert mystery.detail == "no attribute of a known dialect"
    assert any("unrecognised attribute dialect" in f for f in report.findings)


def test_a_reward_before_every_call(landed: Landed) -> None:
    client = landed.client()
    report = diagnose(client, landed.sent.early)
    assert _verdicts(report) == {"chat late": ("not_joined", False)}
    assert any("before any LLM call had ended" in f for f in report.findings)
    strict = diagnose(client, landed.sent.early, emit_uncredited=False)
    assert _verdicts(strict) == {"chat late": ("reward_before_calls", False)}


def test_no_llm_spans_and_unknown_rollouts(landed: Landed) -> None:
    client = landed.client()
    report = diagnose(client, landed.sent.tools)
    assert report.llm_calls == 0 and report.calls == [] and report.spans_by_kind == {"tool": 2, "agent": 1}
    assert any(f.startswith("No LLM spans") for f in report.findings)
    nothing = diagnose(client, "no-such-rollout' OR 1=1 --")
    assert nothing.spans == 0 and nothing.findings == [
        "Nothing received for this rollout id: no spans, rewards or triplets."
    ]


def test_traced_tools_fill_docs_query_8(landed: Landed) -> None:
    client = landed.client()
    [(_, _, sql)] = [q for n, q in doc_queries().items() if n == 8]
    result = client.query(sql)
    [row] = [dict(zip(result.column_names, r)) for r in result.result_rows]
    assert row["tool_name"] == "create_ticket" and "queue must be one of" in row["error"]
    assert row["example_rollouts"] == [landed.sent.tools]
    assert [json.loads(a) for a in row["example_arguments"]] == [{"queue": None, "ticket": "T-2"}]
    result = client.query(
        "SELECT name, attributes[{key:String}] FROM spans WHERE kind = 'tool' AND status = 'ok'",
        parameters={"key": genai.TOOL_CALL_RESULT},
    )
    assert result.result_rows == [("execute_tool create_ticket", '{"ticket":"T-1","queue":"shipping"}')]


def test_cli_prints_the_diagnosis(landed: Landed, tmp_path: Path) -> None:
    env = landed.settings.to_env()
    result = CliRunner().invoke(app, ["doctor", landed.sent.mixed, "--json"], env=env)
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["reasons"]["duplicate"] == 1 and body["reasons"]["judge"] == 2
    assert body["llm_calls"] == 8 and body["triplet_count"] == (1 if landed.sent.retracted_column else 2)
    table = CliRunner().invoke(app, ["doctor", landed.sent.mixed], env=env)
    assert table.exit_code == 0 and "duplicate" in table.output and "unknown_dialect" in table.output
    missing = CliRunner().invoke(app, ["doctor", "no-such-rollout"], env=env)
    assert missing.exit_code == 1 and "Nothing received" in missing.output


def test_dashboard_rollout_page_has_the_panel(landed: Landed) -> None:
    settings = landed.settings
    headers = {"Authorization": f"Bearer {dashboard_token(settings)}"}
    with TestClient(create_app(settings), headers=headers) as api:
        detail = api.get(f"/api/rollouts/{landed.sent.mixed}").json()
        assert detail["doctor"]["reasons"]["judge"] == 2 and detail["doctor"]["llm_calls"] == 8
        page = api.get(f"/rollouts/{landed.sent.mixed}")
    assert page.status_code == 200
    assert 'id="doctor"' in page.text and "Why no triplet?" in page.text
    judge = landed.sent.spans["chat judge"]
    assert f'data-span-id="{judge}" data-reason="judge"' in page.text
    assert 'data-reason="duplicate"' in page.text and 'data-reason="unknown_dialect"' in page.text
