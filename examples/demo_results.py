"""What the demo shows at its end: the versions with their success rates (traffic from ClickHouse,
validation and test from its own evaluations), the promotion decisions, and the plot."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

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


def query(
    stack: Stack, sql: str, wait_for_rows: bool = False, parameters: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the stack's ClickHouse; with ``wait_for_rows``, wait up to 20 s for some
    (the sink lands the last batches a moment after the loop ends)."""
    from agentstream.clickhouse.connect import connect

    client = connect(stack.resolved_settings())
    deadline = time.monotonic() + 20
    while True:
        rows: list[tuple[Any, ...]] = client.query(sql, parameters=parameters).result_rows
        if rows or not wait_for_rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def per_version(stack: Stack) -> dict[str, dict[str, Any]]:
    """Traffic rollouts (train and prod modes; never the pinned evaluations) and their success rate
    per version of the demo's prompt, over all metric windows."""
    rows = query(
        stack,
        """
            SELECT resource_version, sum(rollouts), sum(succeeded)
            FROM version_metrics_by_window
            WHERE resource_name = {name:String} AND mode IN ('train', 'prod')
            GROUP BY resource_version""",
        wait_for_rows=True,
        parameters={"name": PROMPT_RESOURCE},
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


@dataclass
class Phase:
    """One measured batch of the demo: ``n`` rollouts of ``version`` (``kind``: traffic, val, test)
    of which ``successes`` succeeded, ``at_s`` seconds into the run, during ``phase``."""

    phase: str
    kind: str
    version: str
    n: int
    successes: int
    at_s: float


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a success rate (sensible at 0% and 100%, unlike Wald's)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # rounding can put a bound a hair past the rate at 0% and 100%; the band always holds the rate
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def version_table(
    stack: Stack, state: Any, scored: dict[int, Any], evaluations: list[tuple[str, Any]]
) -> tuple[Table, list[dict[str, Any]]]:
    """The versions of the prompt with traffic, validation and test success; and the decisions."""
    rows = per_version(stack)
    table = Table(
        "version",
        "labels",
        "made by",
        "parent",
        "traffic",
        "success",
        "val",
        "test",
        title=f"{PROMPT_RESOURCE}: versions and their success rates",
    )
    for number, version in sorted(state.versions.items()):
        row = rows.get(str(number), {})
        val = scored[number].score if number in scored else None
        test = next((e.score for _, e in evaluations if e.mode == "test" and e.version == number), None)
        made = version.lineage.get("apo.strategy", "seed" if number == 1 else "")
        detail = version.lineage.get("apo.retrieval", "")
        stage = version.lineage.get("apo.stage", "")
        table.add_row(
            f"v{number}",
            ", ".join(state.labels_of(number)),
            " ".join(x for x in (made, detail, stage) if x),
            f"v{version.parent_version}" if version.parent_version else "",
            str(row.get("rollouts", 0)),
            f"{row['success']:.0%}" if row.get("success") is not None else "",
            f"{val:.0%}" if val is not None else "",
            f"{test:.0%}" if test is not None else "",
        )
    return table, promotion_decisions(stack)


def plot_demo(
    phases: list[Phase], test_seed: dict[str, float], test_final: dict[str, float], path: Path
) -> Path:
    """A PNG a person reads at a glance: left, success per version in each measured batch in run
    order, with 95% bands and the phases shaded and named; right, the test split per queue, seed
    vs final."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bars) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [2.2, 1]})
    versions = sorted({p.version for p in phases}, key=lambda v: int(v) if v.isdigit() else 0)
    colours = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(versions)}
    markers = {"traffic": "o", "val": "s", "test": "D"}
    spans: list[tuple[str, int, int]] = []
    for x, p in enumerate(phases):
        if spans and spans[-1][0] == p.phase:
            spans[-1] = (p.phase, spans[-1][1], x)
        else:
            spans.append((p.phase, x, x))
        rate = p.successes / p.n if p.n else 0.0
        low, high = wilson(p.successes, p.n)
        ax.errorbar(
            x,
            rate,
            yerr=[[max(0.0, rate - low)], [max(0.0, high - rate)]],
            fmt=markers.get(p.kind, "o"),
            color=colours[p.version],
            capsize=3,
            label=f"v{p.version}",
        )
    for i, (name, first, last) in enumerate(spans):
        ax.axvspan(first - 0.45, last + 0.45, color="0.92" if i % 2 else "0.97", zorder=0)
        ax.text((first + last) / 2, 1.04, name, ha="center", va="bottom", fontsize=7, rotation=20)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), loc="lower right", fontsize="small", ncol=2, title="version")
    ax.set_ylim(-0.02, 1.15)
    ax.set_xticks(range(len(phases)), [f"{p.kind}\nn={p.n}" for p in phases], fontsize=6)
    ax.set_ylabel("success rate (95% Wilson band)")
    ax.set_title(
        f"{PROMPT_RESOURCE}: success per version ({markers['traffic']} traffic, s val, D test)", fontsize=9
    )
    queues = list(dict.fromkeys([*test_seed, *test_final]))
    xs = range(len(queues))
    bars.bar([x - 0.2 for x in xs], [test_seed.get(q, 0.0) for q in queues], 0.4, label="seed", color="0.6")
    bars.bar(
        [x + 0.2 for x in xs], [test_final.get(q, 0.0) for q in queues], 0.4, label="final", color="tab:green"
    )
    bars.axhline(0.75, color="tab:red", linestyle=":", linewidth=1, label="75% per queue")
    bars.set_xticks(list(xs), queues)
    bars.set_ylim(0, 1.05)
    bars.set_title("test split per queue", fontsize=9)
    bars.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
