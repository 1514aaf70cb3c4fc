"""Row retention (TTL) of the ClickHouse tables, by setting (``Settings.retention``).

Three kinds of tables keep rows for their own number of days: **events** (what agents did),
**triplets** (what trainers learn from) and **decisions** (resource versions, label moves, promotion
decisions and the per-version metrics they were based on). ``None`` or 0 days keeps rows forever —
the default, so that nothing is deleted unless someone chose it.

The sink applies the setting at every start, after the migrations: ``ALTER TABLE … MODIFY TTL``
where the table's TTL differs from the setting, ``REMOVE TTL`` where the setting is now "forever",
and nothing where it already matches (a changed TTL makes ClickHouse re-check every part, so it is
not re-applied needlessly). ClickHouse then drops expired rows during merges; ``OPTIMIZE TABLE …
FINAL`` forces it at once. Kafka topics keep their own retention (``topics/catalogue.py``).

At start the sink also lets ``agentstream forget`` delete rows (:func:`allow_deletes`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

from agentstream.settings import RetentionSettings

logger = logging.getLogger(__name__)

Kind = Literal["events", "triplets", "decisions"]


@dataclass(frozen=True)
class RetainedTable:
    """A table whose rows expire ``days`` of its kind after ``time_column`` (a DateTime64)."""

    table: str
    time_column: str
    kind: Kind


#: Every table with a retention, and the time a row's age is counted from.
RETAINED_TABLES: tuple[RetainedTable, ...] = (
    RetainedTable("spans", "start_time", "events"),
    RetainedTable("rewards", "timestamp", "events"),
    RetainedTable("rollout_events", "timestamp", "events"),
    # a rollout's older state versions go first; its newest stays until it too is that old
    RetainedTable("rollout_states", "updated_at", "events"),
    RetainedTable("dead_letters", "failed_at", "events"),
    RetainedTable("triplets", "created_at", "triplets"),
    RetainedTable("resource_versions", "created_at", "decisions"),
    RetainedTable("resource_labels", "moved_at", "decisions"),
    RetainedTable("promotion_decisions", "decided_at", "decisions"),
    RetainedTable("version_metrics", "window_start", "decisions"),
)

# The TTL clause of a table as system.tables.engine_full shows it (up to SETTINGS or the end).
_TTL_CLAUSE = re.compile(r"\sTTL\s(.+?)(?:\sSETTINGS\s|$)", re.DOTALL)


def retention_days(settings: RetentionSettings, kind: Kind) -> int | None:
    """Days rows of ``kind`` are kept; ``None``: forever."""
    days = {
        "events": settings.events_days,
        "triplets": settings.triplets_days,
        "decisions": settings.decisions_days,
    }[kind]
    return days or None


def ttl_expression(table: RetainedTable, days: int) -> str:
    """The TTL expression, written the way ClickHouse normalises it (so it compares equal)."""
    return f"toDateTime({table.time_column}) + toIntervalDay({int(days)})"


def current_ttl(client: Any, table: str) -> str | None:
    """The table's TTL expression, ``None`` when it has none; raises ``LookupError`` if no table."""
    rows = client.query(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).result_rows
    if not rows:
        raise LookupError(table)
    match = _TTL_CLAUSE.search(rows[0][0])
    return match.group(1).strip() if match else None


def allow_deletes(client: Any) -> list[str]:
    """Let lightweight ``DELETE`` (``agentstream forget``) run on tables with projections; returns
    the tables changed.

    ClickHouse refuses such deletes unless a table says what to do with its projections: rebuild
    them, so the sink's ``kafka_offsets`` projection (where a restart resumes) stays right. A table
    setting, set here by the data's owner because the query endpoint lets no one change settings.
    """
    rows = client.query(
        "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() "
        "AND engine LIKE '%MergeTree' AND name IN "
        "(SELECT DISTINCT table FROM system.projections WHERE database = currentDatabase())"
    ).result_rows
    changed = []
    for name, engine_full in rows:
        if "lightweight_mutation_projection_mode = 'rebuild'" not in engine_full:
            client.command(
                f"ALTER TABLE `{name}` MODIFY SETTING lightweight_mutation_projection_mode = 'rebuild'"
            )
            changed.append(str(name))
    return changed


def apply_table_policies(client: Any, settings: RetentionSettings) -> None:
    """What the sink applies at start, after the migrations: retention, and deletes allowed."""
    apply_retention(client, settings)
    allow_deletes(client)


def apply_retention(
    client: Any, settings: RetentionSettings, tables: tuple[RetainedTable, ...] = RETAINED_TABLES
) -> dict[str, str]:
    """Bring every table's TTL in line with ``settings``; returns what changed (table -> action).

    Idempotent: a table whose TTL already matches is left alone; a missing table is skipped.
    """
    changed: dict[str, str] = {}
    for table in tables:
        try:
            have = current_ttl(client, table.table)
        except LookupError:
            logger.warning("Retention: table %s does not exist; skipped", table.table)
            continue
        days = retention_days(settings, table.kind)
        want = None if days is None else ttl_expression(table, days)
        if have == want:
            continue
        if want is None:
            client.command(f"ALTER TABLE `{table.table}` REMOVE TTL")
            changed[table.table] = "kept forever"
        else:
            # identifiers and an int from our own catalogue and settings: nothing user-typed here
            client.command(
                f"ALTER TABLE `{table.table}` MODIFY TTL toDateTime(`{table.time_column}`) + INTERVAL {days} DAY"
            )
            changed[table.table] = f"{days} days after {table.time_column}"
        logger.info("Retention of %s: %s", table.table, changed[table.table])
    return changed
