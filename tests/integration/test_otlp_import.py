"""``agentstream import`` on the real broker: OTLP JSON files and an Agent Lightning span dump become
span and reward records with their original ids and timestamps; what is rejected is dead-lettered."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentstream.cli.app import app as cli_app
from agentstream.cli.imports import import_paths
from agentstream.schemas import genai
from agentstream.settings import Settings
from agentstream.topics.catalogue import HEADER_DLQ_REASON
from tests.helpers import read_topic

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent.parent / "data" / "otlp"


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def test_import_keeps_ids_and_timestamps(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"resourceSpans": []}\nnot json\n')
    summary = import_paths(
        settings,
        [DATA / "agent_training_legacy.jsonl", DATA / "agl_dump.json", DATA / "otel_genai_logs.jsonl", bad],
    )
    assert summary.failures == []
    assert (summary.files, summary.spans, summary.rewards) == (4, 15, 6)
    # two log records whose messages belong to a span, and one unreadable line
    assert summary.rejected_count == 3
    assert any("bad.jsonl:2: not valid JSON" in reason for reason in summary.rejected)

    spans = {s["span_id"]: s for s in read_topic(settings, settings.topic("spans"), expected=15)}
    assert len(spans) == 15
    call = spans["6e0c63257de34c93"]  # from the AGL dump: float seconds, kept to the microsecond
    assert call["trace_id"] == "d4cda95b652f4a1592b449d5929fda1b"
    assert call["parent_span_id"] == "6e0c63257de34c92"
    assert (call["rollout_id"], call["attempt_id"], call["kind"]) == ("ro-agl-7", "at-agl-7-0", "llm")
    assert _us(call["start_time"]) == 1_760_000_000_123_456 and _us(call["end_time"]) == 1_760_000_001_500_000
    assert call["prompt_token_ids"] == [1, 2, 3] and call["response_token_ids"] == [4, 5]
    legacy = spans["a1b2c3d4e5f60100"]  # OTLP JSON: ns, kept to the microsecond
    assert _us(legacy["start_time"]) == 1_760_000_000_010_000
    assert legacy["rollout_id"] == "ro-legacy-1"
    assert json.loads(legacy["attributes"][genai.INPUT_MESSAGES])[1]["parts"][0]["content"] == "What is 0+2?"

    rewards = {r["reward_id"]: r for r in read_topic(settings, settings.topic("rewards"), expected=6)}
    assert rewards["a1b2c3d4e5f60009:0"]["rollout_id"] == "ro-legacy-1"
    assert _us(rewards["a1b2c3d4e5f60009:0"]["timestamp"]) == 1_760_000_002_950_000
    assert (rewards["6e0c63257de34c94:1"]["name"], rewards["6e0c63257de34c94:1"]["value"]) == (
        "efficiency",
        0.5,
    )

    letters = read_topic(settings, settings.topic("dead-letter"), expected=2, decode=False)
    reasons = [dict(m.headers())[HEADER_DLQ_REASON].decode() for m in letters]
    assert len(reasons) == 2 and all("separate log record" in r for r in reasons)


def test_import_command_prints_a_summary(settings: Settings) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli_app,
        ["--bootstrap-servers", settings.bootstrap_servers or "", "import", str(DATA / "openllmetry.jsonl")],
        env={
            "AGENTSTREAM_TOPIC_PREFIX": settings.topic_prefix,
            "AGENTSTREAM_DATA_DIR": str(settings.data_dir),
        },
    )
    assert result.exit_code == 0, result.output
    assert "spans" in result.output and "4" in result.output
    spans = read_topic(settings, settings.topic("spans"), expected=4)
    assert {s["span_id"] for s in spans} == {f"b7ad6b716920333{i}" for i in range(1, 5)}
