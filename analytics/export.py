"""Triplet export for training elsewhere: JSONL, Parquet or a Hugging Face ``datasets`` folder, with lineage.

Every row is the newest revision of one triplet with the columns a trainer needs (prompt, response,
reward) and where it came from (rollout, attempt, span, resource version, mode, time window, export
id). Next to the output, ``<out>.lineage.json`` records the filters, window and counts::

    config = TripletExportConfig(resource="support_prompt:2", min_reward=1.0)
    result = TripletExport(connect(settings), config, source=settings.default_clickhouse_dsn).write(
        Path("sft.jsonl"), "jsonl")

JSONL and Parquet are written by ClickHouse itself (streamed to the file); ``hf`` needs the ``train``
extra (``datasets``). The export reads one snapshot, the rows the sink had inserted when it began, so
the file and its lineage counts agree while the sink keeps inserting. (Only a merge that, between the
export's two queries, drops a revision superseded after the snapshot can make them differ by that
triplet.)
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .report import parse_resource

FORMATS = ("jsonl", "parquet", "hf")

#: modes left out unless asked for: exports feed training, and the evaluation splits must stay unseen
EVALUATION_MODES = ("val", "test")

_TIME = "DateTime64(6, 'UTC')"


def _message_text(message: str) -> str:
    """SQL: one OTel GenAI message's text (text parts, tool results), or its tool calls as JSON when it only
    calls tools (as ``agentstream.trainers.data`` renders them)."""
    part_text = (
        "multiIf(JSONExtractString(p, 'type') = 'text', JSONExtractString(p, 'content'), "
        "JSONExtractString(p, 'type') = 'tool_call_response', "
        "if(JSONType(p, 'response') = 'String', JSONExtractString(p, 'response'), JSONExtractRaw(p, 'response')), '')"
    )
    calls = f"arrayFilter(p -> JSONExtractString(p, 'type') = 'tool_call', JSONExtractArrayRaw({message}, 'parts'))"
    call_json = (
        "concat('{\"name\": ', toJSONString(JSONExtractString(p, 'name')), ', \"arguments\": ', "
        "toJSONString(if(JSONType(p, 'arguments') = 'String', JSONExtractString(p, 'arguments'), "
        "JSONExtractRaw(p, 'arguments'))), '}')"
    )
    text = f"arrayStringConcat(arrayMap(p -> {part_text}, JSONExtractArrayRaw({message}, 'parts')))"
    return (
        f"if({text} = '' AND notEmpty({calls}), "
        f"concat('[', arrayStringConcat(arrayMap(p -> {call_json}, {calls}), ', '), ']'), {text})"
    )


def _messages_text(column: str, separator: str, role: str | None = None) -> str:
    """SQL: the text of a messages-JSON column (a plain-text value is its own text)."""
    messages = f"JSONExtractArrayRaw({column})"
    if role is not None:
        messages = f"arrayFilter(m -> JSONExtractString(m, 'role') = '{role}', {messages})"
    flattened = f"arrayStringConcat(arrayMap(m -> {_message_text('m')}, {messages}), '{separator}')"
    return f"if(isValidJSON({column}) AND JSONType({column}) = 'Array', {flattened}, {column})"


PROMPT_TEXT = _messages_text("prompt_messages", "\\n")
RESPONSE_TEXT = _messages_text("response", "", role="assistant")


@dataclass
class TripletExportConfig:
    """Which triplets to export. Every filter applies to a triplet's newest revision."""

    #: ``NAME`` or ``NAME:VERSION``; None exports every resource
    resource: str | None = None
    #: keep triplets with a reward of at least this (those without a reward are then left out)
    min_reward: float | None = None
    #: range of ``created_at`` (the LLM call's time), UTC
    since: datetime | None = None
    until: datetime | None = None
    #: rollout modes to export; None: every mode but ``EVALUATION_MODES``
    modes: tuple[str, ...] | None = None
    #: the newest this many triplets
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.resource is not None:
            parse_resource(self.resource)  # fails early on a bad NAME:VERSION
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError(f"since ({self.since.isoformat()}) is after until ({self.until.isoformat()})")
        if self.modes is not None:
            self.modes = tuple(self.modes)
            if not self.modes:
                raise ValueError("modes is empty: name at least one mode, or None for all but val/test")


@dataclass
class ExportResult:
    """What an export wrote."""

    export_id: str
    path: Path
    lineage_path: Path
    format: str
    rows: int
    window_start: datetime | None
    window_end: datetime | None
    by_version: list[dict[str, Any]] = field(default_factory=list)


class TripletExport:
    """Writes the triplets a :class:`TripletExportConfig` selects, in one of ``FORMATS``.

    Args:
        client: a clickhouse-connect client (``agentstream.clickhouse.connect.connect(settings)``).
        config: the filters.
        source: where the data came from, for the lineage file (credentials are removed).
    """

    def __init__(self, client: Any, config: TripletExportConfig | None = None, *, source: str = "") -> None:
        self.client = client
        self.config = config or TripletExportConfig()
        self.source = redact_dsn(source)
        self.export_id = f"ex-{uuid.uuid4().hex[:16]}"

    # ---- the selection -----------------------------------------------------------------------------
    def _selection(self) -> tuple[str, dict[str, Any]]:
        """SQL of the selected triplets (newest revision of each, as of the snapshot) and its parameters."""
        config = self.config
        parameters: dict[str, Any] = {}
        # revisions the sink inserted after the export began are not seen: one snapshot for every query
        inner = ["ingested_at <= {as_of:" + _TIME + "}"]
        if config.resource is not None:
            name, version = parse_resource(config.resource)
            inner.append("resource_name = {resource_name:String}")
            parameters["resource_name"] = name
            if version is not None:
                inner.append("resource_version = {resource_version:String}")
                parameters["resource_version"] = version
        if config.since is not None:
            inner.append("created_at >= {since:" + _TIME + "}")
            parameters["since"] = config.since
        if config.until is not None:
            inner.append("created_at <= {until:" + _TIME + "}")
            parameters["until"] = config.until
        outer = [f"({RESPONSE_TEXT}) != ''"]  # a failed call's triplet has nothing to learn from
        outer.append("NOT retracted")  # withdrawn: a judge call or a duplicate capture
        if config.min_reward is not None:
            outer.append("reward >= {min_reward:Float64}")
            parameters["min_reward"] = config.min_reward
        if config.modes is None:
            outer.append("mode NOT IN {evaluation_modes:Array(String)}")
            parameters["evaluation_modes"] = list(EVALUATION_MODES)
        elif "all" not in config.modes:
            outer.append("mode IN {modes:Array(String)}")
            parameters["modes"] = list(config.modes)
        sql = f"""
            SELECT * FROM
            (
                SELECT * FROM triplets
                WHERE {" AND ".join(inner)}
                ORDER BY triplet_id, version DESC, ingested_at DESC
                LIMIT 1 BY triplet_id
            )
            WHERE {" AND ".join(outer)}"""
        if config.limit is not None:
            sql += "\nORDER BY created_at DESC, triplet_id DESC LIMIT {limit:UInt64}"
            parameters["limit"] = config.limit
        return sql, parameters

    def _export_query(self, selection: str) -> str:
        return f"""
            SELECT
                triplet_id,
                prompt_messages AS prompt,
                {PROMPT_TEXT} AS prompt_text,
                response,
                {RESPONSE_TEXT} AS response_text,
                reward,
                feedback,
                rollout_id,
                attempt_id,
                span_id,
                step,
                toString(resource_name) AS resource_name,
                toString(resource_version) AS resource_version,
                toString(mode) AS mode,
                toString(task_type) AS task_type,
                toString(model) AS model,
                created_at,
                version AS triplet_version,
                toString(credit_assignment) AS credit_assignment,
                {{window_start:Nullable({_TIME})}} AS window_start,
                {{window_end:Nullable({_TIME})}} AS window_end,
                {{export_id:String}} AS export_id
            FROM ({selection})
            ORDER BY created_at, triplet_id"""

    # ---- writing -----------------------------------------------------------------------------------
    def write(self, out: Path, fmt: str) -> ExportResult:
        """Export to ``out`` (a file, or a folder for ``hf``) and write ``<out>.lineage.json``.

        Raises:
            ValueError: an unknown format, or ``out`` or its lineage file already exists.
            RuntimeError: ``hf`` without the ``datasets`` package.
        """
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        out = Path(out)
        lineage_path = out.with_name(out.name + ".lineage.json")
        for existing in (out, lineage_path):
            if existing.exists():
                raise ValueError(f"{existing} exists; remove it or choose another output")
        if fmt == "hf":
            _import_datasets()  # before any work: a clear error naming the extra
        as_of = self.client.query("SELECT now64(6, 'UTC')").result_rows[0][0]
        selection, parameters = self._selection()
        parameters["as_of"] = _utc(as_of)

        by_version = self._counts(selection, parameters)
        rows = sum(v["rows"] for v in by_version)
        first = min((v["first_created_at"] for v in by_version), default=None)
        last = max((v["last_created_at"] for v in by_version), default=None)
        window_start = self.config.since or first
        window_end = self.config.until or last
        query = self._export_query(selection)
        parameters.update(window_start=window_start, window_end=window_end, export_id=self.export_id)

        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.{self.export_id}.partial")
        try:
            if fmt == "hf":
                self._write_hf(query, parameters, partial)
            else:
                self._write_raw(query, parameters, partial, "JSONEachRow" if fmt == "jsonl" else "Parquet")
            os.replace(partial, out)
        finally:
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)

        result = ExportResult(
            self.export_id, out, lineage_path, fmt, rows, window_start, window_end, by_version
        )
        lineage_path.write_text(
            json.dumps(self._lineage(result, _utc(as_of)), indent=2, default=_json_default) + "\n"
        )
        return result

    def _counts(self, selection: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        result = self.client.query(
            f"""
            SELECT toString(resource_name) AS resource_name, toString(resource_version) AS resource_version,
                   count() AS rows, countIf(reward IS NOT NULL) AS rewarded, avg(reward) AS reward_mean,
                   min(created_at) AS first_created_at, max(created_at) AS last_created_at
            FROM ({selection})
            GROUP BY resource_name, resource_version
            ORDER BY resource_name, resource_version""",
            parameters=parameters,
        )
        rows = [dict(zip(result.column_names, row)) for row in result.result_rows]
        for row in rows:
            row["first_created_at"] = _utc(row["first_created_at"])
            row["last_created_at"] = _utc(row["last_created_at"])
            if row["reward_mean"] is not None and row["reward_mean"] != row["reward_mean"]:  # NaN: no rewards
                row["reward_mean"] = None
        return rows

    def _write_raw(self, query: str, parameters: dict[str, Any], path: Path, fmt: str) -> None:
        settings = {"date_time_output_format": "iso", "output_format_json_quote_64bit_integers": 0}
        stream = self.client.raw_stream(query, parameters=parameters, settings=settings, fmt=fmt)
        try:
            with open(path, "wb") as file:
                shutil.copyfileobj(stream, file, 1 << 20)
        finally:
            stream.close()

    def _write_hf(self, query: str, parameters: dict[str, Any], path: Path) -> None:
        datasets = _import_datasets()
        table = self.client.query_arrow(query, parameters=parameters)
        datasets.Dataset(table).save_to_disk(str(path))

    def _lineage(self, result: ExportResult, as_of: datetime) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            agentstream_version = version("agentstream")
        except PackageNotFoundError:
            agentstream_version = ""
        config = asdict(self.config)
        config["modes"] = list(self.config.modes) if self.config.modes is not None else None
        return {
            "export_id": result.export_id,
            "kind": "triplets",
            "format": result.format,
            "path": str(result.path.absolute()),
            "as_of": as_of,
            "filters": {
                **config,
                "excluded_modes": list(EVALUATION_MODES) if self.config.modes is None else [],
                "empty_responses": "excluded",
            },
            "window": {"start": result.window_start, "end": result.window_end},
            "rows": result.rows,
            "by_resource_version": result.by_version,
            "source": {"dsn": self.source, "table": "triplets"},
            "agentstream_version": agentstream_version,
        }


def redact_dsn(dsn: str) -> str:
    """The DSN without user, password or query parameters (which may hold secrets)."""
    if not dsn:
        return ""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError(
            "the hf format needs the `datasets` package: pip install 'agentstream[train]'"
        ) from e
    return datasets


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
