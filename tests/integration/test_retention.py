"""Retention by setting on real chDB: a TTL drops old rows and keeps new ones, follows the setting,
and is applied only when it changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentstream.settings import RetentionSettings
from agentstream.sinks.migrations import migrate
from agentstream.sinks.retention import RETAINED_TABLES, allow_deletes, apply_retention, current_ttl

pytestmark = pytest.mark.integration


def _span_ids(client: Any) -> set[str]:
    return {r[0] for r in client.query("SELECT span_id FROM spans").result_rows}


def test_every_retained_table_exists_with_its_time_column(clickhouse: Any) -> None:
    migrate(clickhouse)
    for table in RETAINED_TABLES:
        kind = clickhouse.query(
            "SELECT type FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
            "AND name = {c:String}",
            parameters={"t": table.table, "c": table.time_column},
        ).result_rows
        assert kind and kind[0][0].startswith("DateTime64"), table


def test_a_ttl_drops_old_rows_keeps_new_ones_and_follows_the_setting(clickhouse: Any) -> None:
    migrate(clickhouse)
    assert apply_retention(clickhouse, RetentionSettings()) == {}  # default: forever, nothing to do
    assert current_ttl(clickhouse, "spans") is None

    changed = apply_retention(clickhouse, RetentionSettings(events_days=1))
    assert set(changed) == {t.table for t in RETAINED_TABLES if t.kind == "events"}
    assert current_ttl(clickhouse, "spans") == "toDateTime(start_time) + toIntervalDay(1)"
    assert current_ttl(clickhouse, "triplets") is None
    assert apply_retention(clickhouse, RetentionSettings(events_days=1)) == {}  # idempotent

    now = datetime.now(UTC)
    clickhouse.insert(
        "spans",
        [["old", "r1", now - timedelta(days=3), now - timedelta(days=3)], ["new", "r2", now, now]],
        column_names=["span_id", "rollout_id", "start_time", "end_time"],
    )
    clickhouse.command("OPTIMIZE TABLE spans FINAL")
    assert _span_ids(clickhouse) == {"new"}

    # longer retention: a 3-day-old row now stays
    assert apply_retention(clickhouse, RetentionSettings(events_days=5)) == {
        t.table: "5 days after " + t.time_column for t in RETAINED_TABLES if t.kind == "events"
    }
    assert current_ttl(clickhouse, "spans") == "toDateTime(start_time) + toIntervalDay(5)"
    clickhouse.insert(
        "spans",
        [["older", "r3", now - timedelta(days=3), now - timedelta(days=3)]],
        column_names=["span_id", "rollout_id", "start_time", "end_time"],
    )
    clickhouse.command("OPTIMIZE TABLE spans FINAL")
    assert _span_ids(clickhouse) == {"new", "older"}

    # back to forever (0 and None alike)
    assert set(apply_retention(clickhouse, RetentionSettings(events_days=0))) == {
        t.table for t in RETAINED_TABLES if t.kind == "events"
    }
    assert current_ttl(clickhouse, "spans") is None


def test_triplets_and_decisions_have_their_own_retention(clickhouse: Any) -> None:
    migrate(clickhouse)
    changed = apply_retention(clickhouse, RetentionSettings(triplets_days=30, decisions_days=365))
    assert set(changed) == {t.table for t in RETAINED_TABLES if t.kind != "events"}
    assert current_ttl(clickhouse, "triplets") == "toDateTime(created_at) + toIntervalDay(30)"
    assert current_ttl(clickhouse, "promotion_decisions") == "toDateTime(decided_at) + toIntervalDay(365)"
    assert current_ttl(clickhouse, "spans") is None


def test_deletes_are_allowed_on_tables_with_projections_once_prepared(clickhouse: Any) -> None:
    migrate(clickhouse)
    now = datetime.now(UTC)
    clickhouse.insert(
        "spans",
        [["a", "r1", now, now, 5], ["b", "r2", now, now, 3]],
        column_names=["span_id", "rollout_id", "start_time", "end_time", "_offset"],
    )
    delete = "DELETE FROM spans WHERE rollout_id = {r:String}"
    with pytest.raises(Exception, match="lightweight_mutation_projection_mode"):
        clickhouse.command(delete, parameters={"r": "r1"})

    assert "spans" in allow_deletes(clickhouse)
    assert allow_deletes(clickhouse) == []  # idempotent
    clickhouse.command(delete, parameters={"r": "r1"})
    assert _span_ids(clickhouse) == {"b"}
    # the rebuilt kafka_offsets projection still answers where the sink resumes
    assert clickhouse.query("SELECT max(_offset) FROM spans").result_rows == [(3,)]
