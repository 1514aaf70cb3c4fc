"""Numbered DDL migrations (``sinks/migrations/NNNN_name.sql``), applied in order at sink start.

Applied versions are recorded in ``schema_migrations``. ClickHouse DDL is not transactional, so
every statement is written to be re-runnable (``IF NOT EXISTS``): a migration interrupted half way
is simply applied again.

After the numbered migrations, the validation rules (:mod:`agentstream.schemas.validation`) are
applied as ``CHECK`` constraints of the sink's tables (:func:`apply_constraints`): generated from the
rules on every run, so the sink and the stream workers cannot drift apart. Whenever a table changes,
the sink's Null-engine ``__probe`` twins are dropped (the sink re-creates them from the tables).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from agentstream.schemas.validation import clickhouse_constraints

from .batch import SINK_TABLES

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self) -> list[str]:
        text = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        return [s.strip() for s in text.split(";") if s.strip()]


def shipped_migrations() -> list[Migration]:
    folder = resources.files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {folder}: {versions}")
    return found


def applied_versions(client: Any) -> dict[int, str]:
    client.command(_LEDGER)
    rows = client.query(
        "SELECT version, argMax(checksum, applied_at) FROM schema_migrations GROUP BY version"
    ).result_rows
    return {int(v): c for v, c in rows}


def migrate(client: Any, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply pending migrations through a clickhouse-connect client; returns those applied."""
    migrations = shipped_migrations() if migrations is None else migrations
    applied = applied_versions(client)
    done = []
    for migration in migrations:
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                logger.warning(
                    "Migration %04d_%s changed after it was applied; not re-applied",
                    migration.version,
                    migration.name,
                )
            continue
        for statement in migration.statements():
            client.command(statement)
        client.insert(
            "schema_migrations",
            [(migration.version, migration.name, migration.checksum)],
            column_names=["version", "name", "checksum"],
        )
        logger.info("Applied migration %04d_%s", migration.version, migration.name)
        done.append(migration)
    if apply_constraints(client) or done:
        drop_probes(client)
    return done


_CONSTRAINT = re.compile(r"CONSTRAINT (\w+) CHECK")


def desired_constraints() -> dict[str, dict[str, str]]:
    """Table -> constraint name -> ``CHECK`` expression, from the validation rules. A name ends in a
    hash of its expression, so a changed rule replaces the constraint."""
    out: dict[str, dict[str, str]] = {}
    for sink_table in SINK_TABLES:
        stem = sink_table.topic.value_schema
        if stem is None:
            continue
        out[sink_table.table] = {
            f"{name}_{hashlib.sha256(expr.encode()).hexdigest()[:6]}": expr
            for name, expr in clickhouse_constraints(stem).items()
        }
    return out


def apply_constraints(client: Any) -> bool:
    """Make the tables' ``valid_*`` constraints those of the validation rules; True if any changed.
    Existing rows are not re-checked (ClickHouse checks constraints on insert)."""
    changed = False
    for table, wanted in desired_constraints().items():
        rows = client.query(
            "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
            parameters={"t": table},
        ).result_rows
        if not rows:
            continue
        present = {name for name in _CONSTRAINT.findall(rows[0][0]) if name.startswith("valid_")}
        for name in sorted(present - set(wanted)):
            client.command(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
            changed = True
        for name, expression in wanted.items():
            if name not in present:
                client.command(f"ALTER TABLE {table} ADD CONSTRAINT IF NOT EXISTS {name} CHECK {expression}")
                changed = True
    if changed:
        logger.info("Applied the validation rules as table constraints")
    return changed


def drop_probes(client: Any) -> None:
    """Drop the sink's Null-engine probe twins, which copy a table's columns and constraints when
    they are created: the sink re-creates them from the changed tables."""
    rows = client.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() AND endsWith(name, '__probe')"
    ).result_rows
    for (name,) in rows:
        client.command(f"DROP TABLE IF EXISTS {name}")
