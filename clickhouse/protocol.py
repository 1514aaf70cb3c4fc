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

from agentstream.clickhouse.credentials import Role
from agentstream.clickhouse.engine import Engine, quote_string
from agentstream.clickhouse.errors import (
    CANNOT_DECOMPRESS,
    NOT_IMPLEMENTED,
    SYNTAX_ERROR,
    TIMEOUT_EXCEEDED,
    UNKNOWN_SETTING,
    GatewayError,
)
from agentstream.clickhouse.guard import Inspector, check_settings, parse_pairs

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
_VALUES = re.compile(rb"\bVALUES\b", re.IGNORECASE)
_CANONICAL_FORMAT = re.compile(r"\s+FORMAT\s+(\w+)$")
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


def _inline_settings(text: str | None) -> dict[str, str]:
    """The settings of ``INSERT INTO t SETTINGS ... FORMAT f`` (to be checked like parameters)."""
    return parse_pairs(text) if text else {}


def _values_data(statement: bytes) -> memoryview:
    # `INSERT INTO t VALUES (...)`: the data follows the keyword. Only the data is taken from
    # here (it is read as data, never as SQL), so a wrong cut can only spoil the insert.
    found = _VALUES.search(statement)
    if found is None:
        raise GatewayError.of(SYNTAX_ERROR, "INSERT without data or SELECT", "SYNTAX_ERROR")
    return memoryview(statement)[found.end() :]


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
    """Turns one HTTP request (parameters and the decompressed body) into a chDB call for a role.

    Every statement is first parsed by the engine and judged (:mod:`.guard`); what runs is the
    engine's own formatting of what was judged, and data for an INSERT is always read from a file,
    so no part of the data can become a statement.
    """

    def __init__(self, engine: Engine, *, timeout: float = 60.0):
        self.engine = engine
        self.timeout = timeout
        self.inspector = Inspector(engine)

    def run(self, params: Mapping[str, str], body: bytes, role: Role = Role.READ) -> Result:
        """Run the request's statement; raises GatewayError where a ClickHouse server would fail
        and where the role may not do what it asks."""
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
        data: memoryview | None = None
        if insert and not _NOT_A_TARGET.search(insert.group("target")):
            settings.update(_inline_settings(insert.group("settings")))
            text = f"INSERT INTO {insert.group('target')} FORMAT {insert.group('format')}"
            text = text.encode("latin-1").decode()
            data = memoryview(statement)[insert.end() :]
        else:
            try:
                text = statement.decode()
            except UnicodeDecodeError as error:
                raise GatewayError.of(SYNTAX_ERROR, "The query is not UTF-8", "SYNTAX_ERROR") from error
        check_settings(settings, role, timeout=self.timeout)
        enforced = {
            **settings,
            "max_execution_time": settings.get("max_execution_time", f"{self.timeout:g}"),
            "timeout_overflow_mode": "throw",
        }
        if role is Role.READ:
            # the engine's own read-only mode as well; 2 (not 1) so that the allowed output settings
            # (date_time_output_format, ...) still apply: which settings pass is check_settings' call
            enforced["readonly"] = "1" if settings.get("readonly", "").strip() == "1" else "2"
        try:
            canonical, nodes = self.inspector.inspect(text, role, settings=enforced, params=bound)
            if nodes[0].kind == "InsertQuery" and not any(
                n.depth == 1 and n.kind.startswith("Select") for n in nodes
            ):
                if data is None:
                    data = _values_data(statement)
                return self._insert(canonical, data, database, enforced, bound)
            return self._query(
                canonical, params.get("default_format") or "TabSeparated", database, enforced, bound
            )
        except GatewayError as error:
            if error.code == TIMEOUT_EXCEEDED:
                raise GatewayError(
                    error.code,
                    f"{error.message} The query endpoint stops every query after "
                    f"{self.timeout:g} s (sink.query_timeout_seconds); narrow the query.",
                ) from error
            raise

    def _insert(
        self,
        canonical: str,
        data: memoryview,
        database: str | None,
        settings: dict[str, str],
        bound: dict[str, str],
    ) -> Result:
        # chDB takes no request body, so the data goes through a file; inline data in the
        # statement would be cut at the engine's max_query_size and at NUL bytes, and could be
        # read as further statements.
        head = _CANONICAL_FORMAT.search(canonical)
        if head is None:
            raise GatewayError.of(SYNTAX_ERROR, "INSERT without a data format", "SYNTAX_ERROR")
        with tempfile.NamedTemporaryFile(prefix="chdb-gateway-", suffix=".data", delete=False) as file:
            file.write(data)
        try:
            sql = (
                f"{canonical[: head.start()]} FROM INFILE {quote_string(file.name)} COMPRESSION 'none'"
                f" FORMAT {head.group(1)}"
            )
            # `VALUES ({m:String})` reads its parameters from the query's (bound, never spliced)
            result = self.engine.execute(
                sql, "TabSeparated", database=database, settings=settings, params=bound
            )
        finally:
            os.unlink(file.name)
        return Result(b"", None, _summary(result))

    def _query(
        self,
        sql: str,
        default_format: str,
        database: str | None,
        settings: dict[str, str],
        bound: dict[str, str],
    ) -> Result:
        embedded = _TRAILING_FORMAT.search(sql)
        if (
            embedded is None
            and default_format in ("TabSeparated", "TSV")
            and not _ANY_FORMAT.search(sql.encode())
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
