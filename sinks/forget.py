"""Forget a subject: delete its rollouts' rows from ClickHouse and tombstone its compacted records.

The subject is one or more rollouts, or a **user**. A user is whoever a rollout is recorded for
under the attribute :data:`USER_ID_KEY` (``agentstream.user_id``), set by the agent where it knows
the user — on the task's metadata (``AgentStream.enqueue(tasks, metadata={"agentstream.user_id": uid})``,
landing in ``rollout_events.metadata``), on any span of the rollout
(``span.set_attribute("agentstream.user_id", uid)``) or on a reward's attributes. A user's rollouts
are every rollout with that value in any of the three; forgetting the user forgets those rollouts.

What forgetting a rollout does:

- deletes (lightweight ``DELETE``, ids bound as parameters) every row of the rollout from every
  MergeTree table with a ``rollout_id`` column (spans, rewards, rollout events and states with the
  task input, triplets, and any such table added later), and every dead letter whose key is the
  rollout id or whose raw record mentions it;
- writes tombstones (key = rollout id, null value) to the compacted topics keyed by rollout: the
  ``rollout-state`` topic (the lifecycle workers' changelog) and the triplet joiner's ``joins``
  changelog, so that compaction drops the rollout's state and a restarted worker does not load it.

What it cannot reach:

- records in the non-compacted topics (spans, rewards, rollout events, triplets, tasks, the
  dead-letter topic) stay in Kafka until their retention (``topics/catalogue.py``); a sink whose
  consumer group lost its committed offsets would insert them again, so run ``forget`` again after
  re-ingesting a topic from its start;
- a stream worker that is running keeps the rollout's state in memory until it restarts, and would
  write it again if the rollout got new events: forget rollouts that have ended;
- aggregates that do not name the rollout (per-version metrics) keep counting it;
- models trained on its triplets (prompts chosen with it, checkpoints' weights) and copies made
  outside agentstream (exports, reports).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer

from agentstream.settings import Settings
from agentstream.topics.catalogue import ROLLOUT_STATE, changelog_topics

logger = logging.getLogger(__name__)

#: Where a rollout records the user it ran for (task metadata, span or reward attributes).
USER_ID_KEY = "agentstream.user_id"

#: The table of dead letters (matched by key and content, it has no rollout_id column).
DEAD_LETTERS_TABLE = "dead_letters"

# Ids per statement: IN lists stay small, and multiSearchAny takes at most 255 needles.
_CHUNK = 200

# Where a user id is recorded: table -> the map column holding USER_ID_KEY.
_USER_SOURCES = (("rollout_events", "metadata"), ("spans", "attributes"), ("rewards", "attributes"))


@dataclass
class ForgetReport:
    """What a forget found and did: rows per table, tombstones per topic."""

    rollout_ids: list[str]
    rows: dict[str, int] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield list(ids[start : start + _CHUNK])


def rollout_tables(client: Any) -> list[str]:
    """Every MergeTree table of the database with a ``rollout_id`` column, by name."""
    rows = client.query(
        "SELECT c.table FROM system.columns AS c "
        "INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table "
        "WHERE c.database = currentDatabase() AND c.name = 'rollout_id' AND t.engine LIKE '%MergeTree' "
        "ORDER BY c.table"
    ).result_rows
    return [str(r[0]) for r in rows]


def _existing(client: Any, table: str) -> bool:
    rows = client.query(
        "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).result_rows
    return bool(rows[0][0])


def user_rollouts(client: Any, user_id: str) -> list[str]:
    """The rollouts recorded for ``user_id`` (see :data:`USER_ID_KEY`), sorted."""
    if not user_id:
        raise ValueError("user id is empty: pass the value the agent recorded as agentstream.user_id")
    found: set[str] = set()
    for table, column in _USER_SOURCES:
        if not _existing(client, table):
            continue
        rows = client.query(
            f"SELECT DISTINCT rollout_id FROM `{table}` WHERE `{column}`[{{k:String}}] = {{u:String}}",
            parameters={"k": USER_ID_KEY, "u": user_id},
        ).result_rows
        found.update(str(r[0]) for r in rows)
    return sorted(found)


def _count_and_delete(client: Any, table: str, where: str, ids: list[str], delete: bool) -> int:
    params = {"ids": ids}
    rows = client.query(f"SELECT count() FROM `{table}` WHERE {where}", parameters=params).result_rows
    count = int(rows[0][0])
    if count and delete:
        try:
            client.command(f"DELETE FROM `{table}` WHERE {where}", parameters=params)
        except Exception as e:
            if "lightweight_mutation_projection_mode" not in str(e):
                raise
            raise RuntimeError(
                f"table {table} does not allow deletes yet: the sink prepares its tables for them when "
                "it starts (sinks/retention.py); restart the sink with this version, then forget again"
            ) from e
    return count


def delete_rollouts(client: Any, rollout_ids: Sequence[str], *, dry_run: bool = False) -> dict[str, int]:
    """Delete the rollouts' rows from every table; returns rows per table (counted before deleting;
    with ``dry_run`` only counted)."""
    counts: dict[str, int] = {}
    ids = sorted(set(rollout_ids))
    for table in rollout_tables(client):
        counts[table] = sum(
            _count_and_delete(client, table, "rollout_id IN {ids:Array(String)}", chunk, not dry_run)
            for chunk in _chunks(ids)
        )
    if _existing(client, DEAD_LETTERS_TABLE):
        where = "key IN {ids:Array(String)} OR multiSearchAny(value, {ids:Array(String)})"
        counts[DEAD_LETTERS_TABLE] = sum(
            _count_and_delete(client, DEAD_LETTERS_TABLE, where, chunk, not dry_run) for chunk in _chunks(ids)
        )
    return counts


def tombstone_topics(settings: Settings) -> list[str]:
    """The compacted topics keyed by rollout id: rollout state and the joiner's changelog."""
    joins = [
        spec for spec in changelog_topics(settings.streams.app_id) if spec.name.endswith("-joins-changelog")
    ]
    return [settings.topic(ROLLOUT_STATE.name), *(settings.topic(spec.name) for spec in joins)]


def write_tombstones(settings: Settings, rollout_ids: Sequence[str], timeout: float = 30.0) -> dict[str, int]:
    """A null-value record per rollout on each of :func:`tombstone_topics`; returns counts per topic.

    Keyed records go through the same partitioner as every producer of these topics (murmur2), so a
    tombstone lands in the partition of the records it replaces.

    Raises:
        RuntimeError: a tombstone was not delivered within ``timeout`` seconds.
    """
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}: {err}")

    producer = Producer(settings.producer_config())
    counts: dict[str, int] = {}
    topics = tombstone_topics(settings)
    for topic in topics:
        for rollout_id in rollout_ids:
            producer.produce(topic, key=rollout_id.encode(), value=None, on_delivery=delivered)
            producer.poll(0)
        counts[topic] = len(rollout_ids)
    left = producer.flush(timeout)
    if left or failures:
        raise RuntimeError(
            f"tombstones not all delivered ({left} pending; {'; '.join(failures[:3]) or 'timed out'}); "
            "ClickHouse rows were deleted: run forget again when Kafka is reachable"
        )
    return counts


def forget(
    settings: Settings,
    client: Any,
    *,
    rollout_ids: Sequence[str] = (),
    user_id: str | None = None,
    dry_run: bool = False,
) -> ForgetReport:
    """Forget the given rollouts and/or every rollout of ``user_id`` (see the module docstring).

    ``client`` must be allowed to write (``connect(settings, write=True)``). With ``dry_run`` nothing
    is deleted or written: the report says what would be.

    Raises:
        ValueError: neither rollouts nor a user were given, or an id is empty.
    """
    ids = set(rollout_ids)
    if "" in ids:
        raise ValueError("a rollout id is empty")
    if user_id is not None:
        ids.update(user_rollouts(client, user_id))
    elif not ids:
        raise ValueError("nothing to forget: give rollout ids or a user id")
    report = ForgetReport(sorted(ids), dry_run=dry_run)
    if not report.rollout_ids:
        return report
    report.rows = delete_rollouts(client, report.rollout_ids, dry_run=dry_run)
    if not dry_run:
        report.tombstones = write_tombstones(settings, report.rollout_ids)
        logger.info("Forgot %d rollouts: %s rows deleted", len(report.rollout_ids), sum(report.rows.values()))
    return report
