"""What ``agentstream status`` reports: each running member's health (from the operations endpoints
the processes advertise in ``<data_dir>/ops/``), consumer lag per group and partition, and how fresh
the sink's tables are. Gathering is separate from rendering so that ``--json`` and the tables show
the same facts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.table import Table

from agentstream.process.metrics import OpsStatus, scrape
from agentstream.settings import Settings
from agentstream.sinks.metrics import sink_topics
from agentstream.topics.catalogue import REWARDS, ROLLOUT_EVENTS, SPANS, TASKS
from agentstream.topics.lag import LagReader, PartitionLag, total_by_group


def known_groups(settings: Settings) -> dict[str, list[str] | None]:
    """Our consumer groups and the topics each reads: their lag shows even before they commit."""
    return {
        settings.sink.group_id: sink_topics(settings),
        settings.streams.app_id: [settings.topic(t.name) for t in (SPANS, REWARDS, ROLLOUT_EVENTS)],
        settings.runner.group_id: [settings.topic(TASKS.name)],
    }


def members(settings: Settings, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Each live process with an operations endpoint, and what its /healthz and /readyz say."""
    found = []
    for status in OpsStatus.live(settings.data_dir):
        health, _ = scrape(f"{status.url}/healthz", None, timeout)
        code, reason = scrape(f"{status.url}/readyz", None, timeout)
        found.append(
            {
                "component": status.component,
                "pid": status.pid,
                "url": status.url,
                "healthy": health == 200,
                "ready": code == 200,
                "reason": "" if code == 200 else (reason.strip() or "no answer"),
            }
        )
    return found


def lag(settings: Settings, timeout: float = 5.0) -> list[PartitionLag]:
    """Lag of our groups (with every partition of their topics) and of any other group on the
    cluster that has committed offsets on our topics (trainers, ...)."""
    reader = LagReader(settings, timeout)
    try:
        groups = known_groups(settings)
        try:
            others = reader.groups()
        except Exception:  # a broker without ListGroups: our own groups still show
            others = []
        for group in others:
            groups.setdefault(group, None)
        return [p for p in reader.lag(groups) if p.topic.startswith(settings.topic_prefix)]
    finally:
        reader.close()


def freshness(settings: Settings) -> dict[str, float]:
    """Age of the newest event per table, through the running sink's query endpoint (or the
    ClickHouse server); never opens a chDB directory itself."""
    from agentstream.clickhouse.connect import chdb_path_of, connect
    from agentstream.clickhouse.gateway import GatewayState
    from agentstream.sinks.metrics import freshness as table_freshness

    path = chdb_path_of(settings.default_clickhouse_dsn)
    if path is not None and GatewayState.load(path) is None:
        raise RuntimeError("no sink is running (its query endpoint answers freshness)")
    return table_freshness(connect(settings, gateway_wait=0))


def gather(settings: Settings) -> dict[str, Any]:
    """The whole report as plain data (what ``--json`` prints); errors are reported, not raised."""
    report: dict[str, Any] = {"data_dir": str(settings.data_dir), "members": members(settings), "errors": []}
    try:
        lags = lag(settings.resolved())
        report["lag"] = {
            "groups": total_by_group(lags),
            "partitions": [{**asdict(p), "lag": p.lag} for p in lags],
        }
    except Exception as e:
        report["lag"] = None
        report["errors"].append(f"lag: {e}")
    try:
        report["freshness_seconds"] = freshness(settings)
    except Exception as e:
        report["freshness_seconds"] = None
        report["errors"].append(f"freshness: {e}")
    return report


def tables(report: dict[str, Any], partitions: bool) -> list[Table]:
    """The report as rich tables: members, lag per group (and per partition), freshness."""
    shown = []
    health = Table("member", "pid", "health", "ready", "endpoint", title="members")
    for m in report["members"]:
        health.add_row(
            m["component"],
            str(m["pid"]),
            "[green]ok[/]" if m["healthy"] else "[red]down[/]",
            "[green]ready[/]" if m["ready"] else f"[yellow]{m['reason']}[/]",
            m["url"],
        )
    if not report["members"]:
        health.add_row("(none running)", "", "", "", "")
    shown.append(health)
    if report["lag"] is not None:
        groups = Table("group", "lag (records)", title="consumer lag")
        for group, total in sorted(report["lag"]["groups"].items()):
            groups.add_row(group, f"{total:,}")
        shown.append(groups)
        if partitions:
            detail = Table(
                "group", "topic", "partition", "committed", "end", "lag", title="lag per partition"
            )
            for p in report["lag"]["partitions"]:
                committed = "-" if p["committed"] is None else str(p["committed"])
                detail.add_row(
                    p["group"], p["topic"], str(p["partition"]), committed, str(p["high"]), str(p["lag"])
                )
            shown.append(detail)
    if report["freshness_seconds"] is not None:
        fresh = Table("table", "newest event (s ago)", title="sink freshness")
        for table, age in sorted(report["freshness_seconds"].items()):
            fresh.add_row(table, f"{age:,.1f}")
        shown.append(fresh)
    return shown
