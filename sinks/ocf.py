"""Avro object-container framing for batch inserts that ClickHouse decodes itself.

The sink never decodes records in Python on the hot path: it strips each record's framing
header, prepends the record's Kafka coordinates, and wraps the bodies in an Avro object container
file that ClickHouse reads with ``FORMAT Avro``.

Prepending works because an Avro record's binary encoding is the concatenation of its fields'
encodings: ``string(topic_id) + varint(partition) + varint(offset) + body`` is a valid record of the
*wrapper* schema (the writer schema with three leading fields).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from agentstream.schemas import AvroSchema
from agentstream.schemas.serde import zigzag_varint

COORD_FIELDS = [
    {"name": "_topic_id", "type": "string"},
    {"name": "_partition", "type": "int"},
    {"name": "_offset", "type": "long"},
]
COORD_COLUMNS = [f["name"] for f in COORD_FIELDS]


def avro_string(text: str) -> bytes:
    raw = text.encode()
    return zigzag_varint(len(raw)) + raw


@lru_cache(maxsize=256)
def wrapper_schema_json(writer_json: str) -> str:
    """The writer schema with the Kafka coordinate fields in front."""
    definition: dict[str, Any] = json.loads(writer_json)
    wrapped = dict(definition, fields=COORD_FIELDS + list(definition["fields"]))
    return json.dumps(wrapped, separators=(",", ":"))


def coordinates(topic_id: bytes, partition_prefix: bytes, offset: int) -> bytes:
    """Encoded leading fields; ``topic_id`` and ``partition_prefix`` are pre-encoded per partition."""
    return topic_id + partition_prefix + zigzag_varint(offset)


def container(schema_json: str, count: int, chunks: list[bytes | memoryview]) -> Iterator[bytes | memoryview]:
    """Chunks of one Avro object container file: ``count`` records, whose bytes are ``chunks``,
    in a single block."""
    sync = os.urandom(16)
    header = bytearray(b"Obj\x01")
    metadata = {"avro.schema": schema_json.encode(), "avro.codec": b"null"}
    header += zigzag_varint(len(metadata))
    for key, value in metadata.items():
        header += avro_string(key) + zigzag_varint(len(value)) + value
    header += zigzag_varint(0) + sync
    yield bytes(header)
    yield zigzag_varint(count) + zigzag_varint(sum(map(len, chunks)))
    yield from chunks
    yield sync


def insert_columns(writer: AvroSchema, table_columns: set[str]) -> list[str]:
    """Columns to name in the INSERT: coordinates plus writer fields the table has.

    Writer fields the table lacks are skipped by ClickHouse; table columns the writer lacks take
    their defaults.
    """
    return COORD_COLUMNS + [name for name in writer.field_names if name in table_columns]


class ContainerStream:
    """A read-only binary file over chunks, so an insert streams without joining them all first."""

    def __init__(self, chunks: Iterator[bytes | memoryview]) -> None:
        self._chunks = chunks
        self._pending: bytes | memoryview = b""

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes | memoryview] = []
        have = 0
        if self._pending:
            parts.append(self._pending)
            have = len(self._pending)
            self._pending = b""
        for chunk in self._chunks:
            parts.append(chunk)
            have += len(chunk)
            if 0 <= size <= have:
                break
        data = b"".join(parts)
        if 0 <= size < len(data):
            self._pending = memoryview(data)[size:]
            data = data[:size]
        return data

    def readable(self) -> bool:
        return True
