"""Per-version metrics by rollout mode in ClickHouse: the migration that adds ``mode`` to the
``version_metrics`` partials (and to their sorting key), the view that groups by it, and the
dashboard's A/B series, which counts traffic (train, prod) and not pinned evaluations (val, test)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agentstream.analytics.queries import DashboardQueries
from agentstream.sinks.migrations import migrate, shipped_migrations

pytestmark = pytest.mark.integration

WINDOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
COLUMNS = [
    "resource_name", "resource_version", "window_start", "window_end", "source_partition", "revision",
    "rollouts", "succeeded", "failed", "rewards", "reward_sum", "reward_sum_squares", "latency_ms_sum",
    "latency_ms_max", "latency_ms_histogram", "emitted_at", "_topic_id", "_partition", "_offset",
]  # fmt: skip


def partial(version: str, revision: int, rollouts: int, succeeded: int, offset: int) -> list[Any]:
    """One partial of window WINDOW, partition 0 (1 s latency and reward 1 per success)."""
    end = WINDOW.replace(second=10)
    return [
        "prompt", version, WINDOW, end, 0, revision, rollouts, succeeded, rollouts - succeeded, succeeded,
        float(succeeded), float(succeeded), 1000.0 * rollouts, 1000.0, [], WINDOW, "metrics", 0, offset,
    ]  # fmt: skip


def test_partials_count_by_mode_from_the_migration_on(clickhouse: Any) -> None:
    before = [m for m in shipped_migrations() if m.version < 10]
    migrate(clickhouse, before)
    clickhouse.insert("version_metrics", [partial("1", 1, 5, 2, 0)], column_names=COLUMNS)

    applied = migrate(clickhouse)
    assert [m.name for m in applied] == ["version_metrics_mode"]
    # a partial stored before: mode '' (every mode together), still read by the view
    [(old_mode, old_rollouts)] = clickhouse.query(
        "SELECT mode, rollouts FROM version_metrics_by_window WHERE resource_version = '1'"
    ).result_rows
    assert (old_mode, old_rollouts) == ("", 5)

    # same version, window and partition, two modes: two partials, each keeping its highest revision
    rows = [
        [*partial("2", 1, 10, 5, 1), "train"],
        [*partial("2", 2, 20, 12, 2), "train"],
        [*partial("2", 1, 40, 40, 3), "val"],
        [*partial("2", 1, 6, 0, 4), "prod"],
        [*partial("2", 1, 8, 0, 5), "test"],
    ]
    clickhouse.insert("version_metrics", rows, column_names=[*COLUMNS, "mode"])
    by_mode = dict(
        clickhouse.query(
            "SELECT mode, (rollouts, succeeded) FROM version_metrics_by_window WHERE resource_version = '2'"
        ).result_rows
    )
    assert by_mode == {"train": (20, 12), "val": (40, 40), "prod": (6, 0), "test": (8, 0)}

    queries = DashboardQueries(clickhouse)
    [traffic] = queries.ab_series("prompt")["series"]["2"]
    assert (traffic["rollouts"], traffic["succeeded"], traffic["failed"]) == (26, 12, 14)
    assert traffic["success_rate"] == pytest.approx(12 / 26)
    assert traffic["reward_mean"] == pytest.approx(1.0) and traffic["latency_ms_mean"] == pytest.approx(
        1000.0
    )
    assert "1" not in queries.ab_series("prompt")["series"]  # mode '': not known to be traffic
    [evaluation] = queries.ab_series("prompt", modes=["val", "test"])["series"]["2"]
    assert (evaluation["rollouts"], evaluation["succeeded"]) == (48, 40)

    assert migrate(clickhouse) == []  # applied once
    for statement in applied[0].statements():  # and re-runnable, as every migration must be
        clickhouse.command(statement)
