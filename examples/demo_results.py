"""What the demo reads back from ClickHouse at its end: figures per version, the promotion
decisions, and the plot of success rate per version over time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agentstream.deploy.stack import Stack

from .support_agent import PROMPT_RESOURCE

_DECISION_COLUMNS = (
    "action",
    "candidate_version",
    "production_version",
    "candidate_n",
    "candidate_successes",
    "production_n",
    "production_successes",
    "p_value",
    "reason",
)


def query(stack: Stack, sql: str, wait_for_rows: bool = False) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the stack's ClickHouse; with ``wait_for_rows``, wait up to 20 s for some
    (the sink lands the last batches a moment after the loop ends)."""
    from agentstream.clickhouse.connect import connect

    client = connect(stack.resolved_settings())
    deadline = time.monotonic() + 20
    while True:
        rows: list[tuple[Any, ...]] = client.query(sql).result_rows
        if rows or not wait_for_rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def per_version(stack: Stack) -> dict[str, dict[str, Any]]:
    """Rollouts and success rate per version of the demo's prompt, over all metric windows."""
    rows = query(
        stack,
        f"""
            SELECT resource_version, sum(rollouts), sum(succeeded)
            FROM version_metrics_by_window WHERE resource_name = '{PROMPT_RESOURCE}'
            GROUP BY resource_version""",
        wait_for_rows=True,
    )
    return {v: {"rollouts": n, "success": (s / n if n else None)} for v, n, s in rows}


def promotion_decisions(stack: Stack) -> list[dict[str, Any]]:
    """The promotion controller's decisions other than ``hold``, oldest first."""
    rows = query(
        stack,
        """
            SELECT action, candidate_version, production_version, candidate_n, candidate_successes,
                   production_n, production_successes, p_value, reason
            FROM promotion_decisions WHERE action != 'hold' ORDER BY decided_at""",
    )
    return [dict(zip(_DECISION_COLUMNS, row)) for row in rows]


def plot_success(stack: Stack, path: Path) -> Path:
    """Write a PNG of the success rate per version per metrics window to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = query(
        stack,
        f"""
            SELECT resource_version, window_start, rollouts, succeeded
            FROM version_metrics_by_window WHERE resource_name = '{PROMPT_RESOURCE}' AND rollouts > 0
            ORDER BY window_start""",
    )
    series: dict[str, list[tuple[Any, float, int]]] = {}
    for version, start, n, s in rows:
        series.setdefault(version, []).append((start, s / n, n))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for version in sorted(series, key=lambda v: int(v) if v.isdigit() else 0):
        points = series[version]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"v{version}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("success rate (per 10 s window)")
    ax.set_title(f"{PROMPT_RESOURCE}: success rate per version over time")
    ax.legend(loc="upper left", fontsize="small", ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
