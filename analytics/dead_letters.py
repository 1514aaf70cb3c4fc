"""The dead letters in ClickHouse: what the dashboard's dead-letter page and ``agentstream dead-letters`` show.

Rows come from ``dead_letters`` (the sink lands the dead-letter topic there, see ``sinks/writer.py``
``dead_letter_row``), joined with ``dead_letter_replays`` (what ``dead-letters replay`` re-drove).
As in :mod:`.queries`, user input never becomes SQL text: values are bound parameters, and the
only choice that changes a statement's shape (the time bucket) picks a fixed fragment from an
allow-list. :class:`DeadLetterFilter` validates every filter before a query runs.
"""

from __future__ import annotations

import binascii
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agentstream.topics.catalogue import HEADER_DLQ_REFERENCE, HEADER_DLQ_REPLAY_OF

from .queries import parse_time

__all__ = ["DeadLetterFilter", "DeadLetterQueries", "parse_id"]

_NAME = r"^[A-Za-z0-9_.:\-]+$"  # topic names, consumer groups, exception class names
_ID = r"^\d{1,10}/\d{1,19}$"
# time bucket -> the ClickHouse function that floors a time to it
_BUCKETS: dict[str, str] = {"minute": "toStartOfMinute", "hour": "toStartOfHour", "day": "toStartOfDay"}
#: what ``dead-letters replay`` re-drove (producers/dead_letter_replay.py, migration 0008)
REPLAYS_TABLE = "dead_letter_replays"

# Every dead letter with its replay, if any. join_use_nulls cannot be set through the read-only
# gateway, so the replay columns are made Nullable: a LEFT JOIN fills a Nullable miss with NULL.
_FROM = f"""
    dead_letters AS d
    LEFT JOIN
    (
        SELECT dead_letter_topic_id, dead_letter_partition, dead_letter_offset,
               toNullable(min(replayed_at)) AS first_replayed_at,
               toNullable(argMin(replayed_partition, replayed_at)) AS first_partition,
               toNullable(argMin(replayed_offset, replayed_at)) AS first_offset
        FROM {REPLAYS_TABLE}
        GROUP BY dead_letter_topic_id, dead_letter_partition, dead_letter_offset
    ) AS r
    ON r.dead_letter_topic_id = d._topic_id AND r.dead_letter_partition = d._partition
       AND r.dead_letter_offset = d._offset
"""
# a reference's size is the original's (its value is a small JSON object naming it)
_COLUMNS = f"""
    d._partition AS partition, d._offset AS offset, d.failed_at AS failed_at,
    d.source_topic AS source_topic, d.source_partition AS source_partition,
    d.source_offset AS source_offset, d.consumer AS consumer, d.error_class AS error_class,
    d.reason AS reason, d.key AS key,
    d.headers['{HEADER_DLQ_REFERENCE}'] = '1' AS reference,
    if(reference, JSONExtractUInt(d.value, 'size'), length(d.value)) AS size,
    d.headers['{HEADER_DLQ_REPLAY_OF}'] AS repeat_of,
    r.first_replayed_at AS replayed_at,
    if(r.first_replayed_at IS NULL, '',
       concat(d.source_topic, '/', toString(r.first_partition), '/', toString(r.first_offset))) AS replayed_to
"""


def parse_id(text: str) -> tuple[int, int]:
    """``partition/offset`` of a dead letter on the dead-letter topic.

    Raises:
        ValueError: not two non-negative integers separated by ``/``.
    """
    partition, sep, offset = text.strip().partition("/")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text!r} is not a dead-letter id: give partition/offset, e.g. 0/42")
    return int(partition), int(offset)


class DeadLetterFilter(BaseModel):
    """Which dead letters to show (or replay): every field is optional and narrows the set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_topic: str | None = Field(
        None, max_length=249, pattern=_NAME, description="Refused from this topic."
    )
    consumer: str | None = Field(None, max_length=200, pattern=_NAME, description="Refused by this consumer.")
    error_class: str | None = Field(None, max_length=200, pattern=_NAME, description="With this error class.")
    since: datetime | None = Field(None, description="Failed at or after (ISO 8601 or an age: 30m, 2h, 7d).")
    until: datetime | None = Field(None, description="Failed before.")
    replayed: bool | None = Field(None, description="Only those re-driven (true) or not yet (false).")
    ids: tuple[str, ...] = Field(
        (), max_length=10_000, description="partition/offset on the dead-letter topic."
    )
    source_offsets: tuple[int, ...] = Field((), max_length=10_000, description="Offsets in the source topic.")
    bucket: Literal["minute", "hour", "day"] = "hour"
    limit: int = Field(50, ge=1, le=10_000)
    offset: int = Field(0, ge=0, le=1_000_000)

    @field_validator("since", "until", mode="before")
    @classmethod
    def _time(cls, value: Any) -> datetime | None:
        return parse_time(value)

    @field_validator("ids", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else list(value or ())
        for item in items:
            parse_id(str(item))
        return tuple(str(item).strip() for item in items)

    @field_validator("source_offsets", mode="before")
    @classmethod
    def _offsets(cls, value: Any) -> Any:
        return [value] if isinstance(value, int | str) else value

    @model_validator(mode="after")
    def _ranges(self) -> DeadLetterFilter:
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")
        if any(o < 0 for o in self.source_offsets):
            raise ValueError("source offsets are not negative")
        return self

    def query_string(self, **changes: Any) -> str:
        """These filters (with ``changes``) as URL query parameters, for links between pages."""
        from urllib.parse import urlencode

        data = self.model_copy(update=changes).model_dump(exclude_defaults=True, mode="json")
        return urlencode(
            {k: v for k, v in data.items() if v is not None and k not in ("ids", "source_offsets")}
        )

    def where(self) -> tuple[str, dict[str, Any]]:
        """The WHERE clause over ``_FROM`` (constant fragments) and its bound parameters."""
        conditions, parameters = ["1"], {}
        for name in ("source_topic", "consumer", "error_class"):
            value = getattr(self, name)
            if value is not None:
                conditions.append(f"d.{name} = {{{name}:String}}")
                parameters[name] = value
        if self.since is not None:
            conditions.append("d.failed_at >= {since:DateTime64(6, 'UTC')}")
            parameters["since"] = self.since
        if self.until is not None:
            conditions.append("d.failed_at < {until:DateTime64(6, 'UTC')}")
            parameters["until"] = self.until
        if self.replayed is not None:
            conditions.append(
                "r.first_replayed_at IS NOT NULL" if self.replayed else "r.first_replayed_at IS NULL"
            )
        if self.ids:
            conditions.append(
                "concat(toString(d._partition), '/', toString(d._offset)) IN {ids:Array(String)}"
            )
            parameters["ids"] = [f"{p}/{o}" for p, o in map(parse_id, self.ids)]
        if self.source_offsets:
            conditions.append("d.source_offset IN {source_offsets:Array(Int64)}")
            parameters["source_offsets"] = list(self.source_offsets)
        return " AND ".join(conditions), parameters


class DeadLetterQueries:
    """The dead-letter queries over one clickhouse-connect client; plain dicts and lists back."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _rows(self, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.client.query(sql, parameters=parameters).named_results())

    def page(self, where: DeadLetterFilter) -> dict[str, Any]:
        """What the dead-letter page shows: the newest matching records, counts and a timeline."""
        return {
            **self.records(where),
            "counts": self.counts(where),
            "timeline": self.timeline(where),
            "filter": where.model_dump(mode="json", exclude_none=True, exclude_defaults=True),
        }

    def records(self, where: DeadLetterFilter) -> dict[str, Any]:
        """One page of dead letters, newest first: ``{"total": n, "rows": [...]}``.

        A row: ``id`` (``partition/offset`` on the dead-letter topic), ``failed_at``, source
        coordinates, ``consumer``, ``error_class``, ``reason``, ``key``, ``size`` (bytes of the
        original), ``reference`` (only a reference to the original was kept), ``repeat_of`` (the
        dead letter it was re-driven from, when it failed again) and ``replayed_at``/``replayed_to``.
        """
        condition, parameters = where.where()
        rows = self._rows(
            f"""
            SELECT {_COLUMNS}, count() OVER () AS total
            FROM {_FROM}
            WHERE {condition}
            ORDER BY failed_at DESC, partition DESC, offset DESC
            LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}
            """,  # the fragments are constants; every value is a bound parameter
            {**parameters, "limit": where.limit, "offset": where.offset},
        )
        total = rows[0]["total"] if rows else self._count(condition, parameters)
        for row in rows:
            del row["total"]
            row["id"] = f"{row['partition']}/{row['offset']}"
            row["reference"] = bool(row["reference"])
        return {"total": int(total), "rows": rows}

    def _count(self, condition: str, parameters: dict[str, Any]) -> int:
        rows = self.client.query(f"SELECT count() FROM {_FROM} WHERE {condition}", parameters=parameters)
        return int(rows.result_rows[0][0])

    def counts(self, where: DeadLetterFilter) -> list[dict[str, Any]]:
        """Matching dead letters per source topic, consumer and error class, most first."""
        condition, parameters = where.where()
        return self._rows(
            f"""
            SELECT d.source_topic AS source_topic, d.consumer AS consumer, d.error_class AS error_class,
                   count() AS dead_letters, countIf(r.first_replayed_at IS NOT NULL) AS replayed,
                   min(d.failed_at) AS first_failed_at, max(d.failed_at) AS last_failed_at
            FROM {_FROM}
            WHERE {condition}
            GROUP BY source_topic, consumer, error_class
            ORDER BY dead_letters DESC, source_topic, consumer, error_class
            LIMIT 1000
            """,
            parameters,
        )

    def timeline(self, where: DeadLetterFilter) -> dict[str, Any]:
        """Matching dead letters per time bucket and error class, oldest bucket first.

        ``{"bucket": "hour", "error_classes": [...], "rows": [{"at", "total", "by_class": {...}}], "max": n}``
        """
        condition, parameters = where.where()
        floor = _BUCKETS[where.bucket]
        counted = self._rows(
            f"""
            SELECT {floor}(d.failed_at) AS at, d.error_class AS error_class, count() AS n
            FROM {_FROM}
            WHERE {condition}
            GROUP BY at, error_class
            ORDER BY at DESC, error_class
            LIMIT 10000
            """,
            parameters,
        )
        buckets: dict[datetime, dict[str, int]] = {}
        for row in counted:
            buckets.setdefault(row["at"], {})[row["error_class"]] = int(row["n"])
        newest = sorted(buckets.items())[-200:]
        return {
            "bucket": where.bucket,
            "error_classes": sorted({c for _, by_class in newest for c in by_class}),
            "rows": [
                {"at": at, "total": sum(by_class.values()), "by_class": by_class} for at, by_class in newest
            ],
            "max": max((sum(by_class.values()) for _, by_class in newest), default=0),
        }

    def dead_letters(self, where: DeadLetterFilter, *, newest_first: bool = True) -> list[dict[str, Any]]:
        """The matching dead letters in full (value and headers), for a replay: ``where.limit`` of
        them, the newest (or oldest), in dead-letter order. Each dict holds the keyword arguments
        of :class:`agentstream.producers.dead_letter_replay.DeadLetter`."""
        condition, parameters = where.where()
        order = "DESC" if newest_first else "ASC"
        rows = self._rows(
            f"""
            SELECT d._topic_id AS topic_id, d._partition AS partition, d._offset AS offset,
                   d.source_topic AS source_topic, d.source_partition AS source_partition,
                   d.source_offset AS source_offset, d.consumer AS consumer, d.error_class AS error_class,
                   d.reason AS reason, d.key AS key, hex(d.value) AS value_hex, d.headers AS headers,
                   d.failed_at AS failed_at, r.first_replayed_at AS replayed_at
            FROM {_FROM}
            WHERE {condition}
            ORDER BY failed_at {order}, partition {order}, offset {order}
            LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}
            """,  # hex: the value's exact bytes, whatever the client does with String columns
            {**parameters, "limit": where.limit, "offset": where.offset},
        )
        found = [
            {
                "topic_id": str(row["topic_id"]),
                "partition": int(row["partition"]),
                "offset": int(row["offset"]),
                "source_topic": row["source_topic"],
                "source_partition": int(row["source_partition"]),
                "source_offset": int(row["source_offset"]),
                "consumer": row["consumer"],
                "error_class": row["error_class"],
                "reason": row["reason"],
                "key": row["key"],
                "value": binascii.unhexlify(row["value_hex"]),
                "headers": dict(row["headers"]),
                "failed_at": row["failed_at"],
                "replayed_at": row["replayed_at"],
            }
            for row in rows
        ]
        return sorted(found, key=lambda d: (d["topic_id"], d["partition"], d["offset"]))
