"""The ClickHouse HTTP protocol over chDB: one request's parameters and body become one statement.

The ``query`` URL parameter and the request body form the statement; for ``INSERT ... FORMAT`` the
rest of the body is the data. Other parameters are per-query settings, ``param_*`` bind server-side
parameters, and ``database`` / ``default_format`` pick what a ClickHouse server would.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

from agentstream.clickhouse.engine import Engine, quote_string
from agentstream.clickhouse.errors import (
    CANNOT_DECOMPRESS,
    NOT_IMPLEMENTED,
    SYNTAX_ERROR,
    UNKNOWN_SETTING,
    GatewayError,
)

# HTTP-interface parameters that are not engine settings; chDB would reject several of them.
_TRANSPORT_PARAMS = frozenset(
    {
        "query", "database", "default_format", "user", "password", "quota_key", "query_id",
        "session_id", "session_timeout", "session_check", "close_session", "compress", "decompress",
        "buffer_size", "wait_end_of_query", "client_protocol_version", "role", "stacktrace",
        "send_progress_in_http_headers", "http_headers_progress_interval_ms",
        "enable_http_compression", "http_zlib_compression_level",
        "cancel_http_readonly_queries_on_client_close", "http_response_buffer_size",
        "http_wait_end_of_query", "http_native_compression_disable_checksumming_on_decompress",
        "add_http_cors_header",
    }
)  # fmt: skip
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LEADING = r"(?:\s+|--[^\n]*\n|/\*.*?\*/)*"
# `INSERT INTO <target> [SETTINGS ...] FORMAT <fmt>`, then the data; ClickHouse starts the data
# after the first newline following the format name, or after the whitespace when there is none.
_INSERT_FORMAT = re.compile(
    _LEADING + r"INSERT\s+INTO\s+(?:TABLE\s+)?(?P<target>[^';]+?)"
    r"(?:\s+SETTINGS\s+(?P<settings>[^;]+?))?\s+FORMAT\s+(?P<format>\w+)[ \t\f\v]*(?:\r?\n)?",
    re.IGNORECASE | re.DOTALL,
)
_NOT_A_TARGET = re.compile(r"\b(?:SELECT|VALUES|WITH)\b", re.IGNORECASE)
_SESSION_STATEMENT = re.compile(_LEADING + r"(?:SET|USE)\b", re.IGNORECASE | re.DOTALL)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_ANY_FORMAT = re.compile(rb"\bFORMAT\b", re.IGNORECASE)
CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}


def decompress(body: bytes, encoding: str) -> bytes:
    """The request body before its ``Content-Encoding`` (lz4 frames, gzip, zstd, br, ...)."""
    encoding = encoding.strip().lower()
    if not body or encoding in ("", "identity"):
        return body
    try:
        if encoding == "lz4":
            import lz4.frame

            # clickhouse-connect sends one LZ4 frame per block; lz4.frame.decompress reads only one.
            parts = []
            while body:
                decompressor = lz4.frame.LZ4FrameDecompressor()
                parts.append(decompressor.decompress(body))
                if not decompressor.eof:
                    raise ValueError("truncated LZ4 frame")
                body = decompressor.unused_data
            return b"".join(parts)
        from clickhouse_connect.driver._backend.httpcommon import decompress_response

        return decompress_response(body, encoding)
    except Exception as error:
        raise GatewayError.of(
            CANNOT_DECOMPRESS,
            f"Cannot decompress the {encoding!r} request body: {error}",
            "CANNOT_DECOMPRESS",
        ) from error


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Text fields of a multipart form (clickhouse-connect sends long parameters that way)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            raise GatewayError.of(
                NOT_IMPLEMENTED, "External data is not supported by chDB", "NOT_IMPLEMENTED"
            )
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode() if isinstance(payload, bytes) else ""
    return fields


class Result:
    """A finished statement: body, output format (None when it produced no result set), stats."""

    def __init__(self, body: bytes, fmt: str | None, summary: dict[str, str]):
        self.body = body
        self.fmt = fmt
        self.summary = summary


def _summary(result: Any) -> dict[str, str]:
    try:
        read_rows, written_rows = result.rows_read(), result.rows_written()
        return {
            "read_rows": str(read_rows),
            "read_bytes": str(result.bytes_read()),
            "written_rows": str(written_rows),
            "written_bytes": str(result.bytes_written()),
            "total_rows_to_read": str(read_rows),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
    except (AttributeError, TypeError, ValueError):  # older chdb results lack some counters
        return {}


class Executor:
    """Turns one HTTP request (parameters and the decompressed body) into a chDB call."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def run(self, params: Mapping[str, str], body: bytes) -> Result:
        """Run the request's statement; raises GatewayError where a ClickHouse server would fail."""
        query = params.get("query", "").encode()
        statement = query + b"\n" + body if query and body else query or body
        if not statement.strip():
            raise GatewayError.of(SYNTAX_ERROR, "Empty query", "SYNTAX_ERROR")
        database = params.get("database") or None
        settings = {
            k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS and not k.startswith("param_")
        }
        for name in settings:
            if not _SETTING_NAME.fullmatch(name):
                raise GatewayError.of(UNKNOWN_SETTING, f"Unknown setting '{name}'", "UNKNOWN_SETTING")
        bound = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}

        # The statement of an INSERT is short; its data can be large and binary. Latin-1 keeps
        # regex offsets equal to byte offsets.
        head = statement[: 1 << 16].decode("latin-1")
        insert = _INSERT_FORMAT.match(head)
        if insert and not _NOT_A_TARGET.search(insert.group("target")):
            return self._insert(insert, memoryview(statement)[insert.end() :], database, settings)
        if _SESSION_STATEMENT.match(head):
            raise GatewayError.of(
                NOT_IMPLEMENTED,
                "SET and USE need a session, which the chDB gateway does not keep: pass settings and "
                "the database with each query",
                "NOT_IMPLEMENTED",
            )
        return self._query(
            statement, params.get("default_format") or "TabSeparated", database, settings, bound
        )

    def _insert(
        self, match: re.Match[str], data: memoryview, database: str | None, settings: dict[str, str]
    ) -> Result:
        # chDB takes no request body, so the data goes through a file; inline data in the
        # statement would be cut at the engine's max_query_size and at NUL bytes.
        target = match.group("target").encode("latin-1").decode()
        in_query = match.group("settings")
        in_query_clause = f" SETTINGS {in_query.encode('latin-1').decode()}" if in_query else ""
        with tempfile.NamedTemporaryFile(prefix="chdb-gateway-", suffix=".data", delete=False) as file:
            file.write(data)
        try:
            sql = (
                f"INSERT INTO {target} FROM INFILE {quote_string(file.name)} COMPRESSION 'none'"
                f"{in_query_clause} FORMAT {match.group('format')}"
            )
            result = self.engine.execute(sql, "TabSeparated", database=database, settings=settings)
        finally:
            os.unlink(file.name)
        return Result(b"", None, _summary(result))

    def _query(
        self,
        statement: bytes,
        default_format: str,
        database: str | None,
        settings: dict[str, str],
        bound: dict[str, str],
    ) -> Result:
        try:
            sql: str | bytes = statement.decode()
        except UnicodeDecodeError:
            sql = statement
        text = sql if isinstance(sql, str) else statement.decode("latin-1")
        embedded = _TRAILING_FORMAT.search(text)
        if (
            embedded is None
            and default_format in ("TabSeparated", "TSV")
            and not _ANY_FORMAT.search(statement)
        ):
            # A result set always has a names line, a DDL statement prints nothing: that is how
            # the reply can tell clickhouse-connect's `command` whether there was a result set.
            result = self.engine.execute(
                sql, "TabSeparatedWithNames", database=database, settings=settings, params=bound
            )
            raw = result.bytes() or b""
            if not raw:
                return Result(b"", None, _summary(result))
            newline = raw.find(b"\n")
            return Result(raw[newline + 1 :] if newline >= 0 else b"", "TabSeparated", _summary(result))
        result = self.engine.execute(sql, default_format, database=database, settings=settings, params=bound)
        fmt = embedded.group(1) if embedded else default_format
        return Result(result.bytes() or b"", fmt, _summary(result))
