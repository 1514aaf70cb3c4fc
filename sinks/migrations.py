"""Numbered DDL migrations (``sinks/migrations/NNNN_name.sql``), applied in order at sink start.

Applied versions are recorded in ``schema_migrations``. ClickHouse DDL is not transactional, so
every statement is written to be re-runnable (``IF NOT EXISTS``): a migration interrupted half way
is simply applied again.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

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
    return done
