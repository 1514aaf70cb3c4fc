"""What a statement sent to the query endpoint may do, decided on ClickHouse's own parse of it.

The engine parses the statement (``EXPLAIN AST``, which runs nothing) and the gateway judges the
tree, never the text: comments, quoting, letter case and odd spacing change the text but not the
tree. Refused for every role: table functions and table engines that reach files, the network,
other servers or programs (``file``, ``url``, ``s3``, ``remote``, ``mysql``, ``executable``, ...,
judged against the engine's own lists, so a function added by a newer engine is refused until it is
allowed here), ``INTO OUTFILE`` / ``FROM INFILE``, ``SET`` / ``USE`` / ``SYSTEM`` / ``KILL`` /
``BACKUP`` and access-control statements, and settings outside a small allow-list. The read role
runs only queries that read (and the engine runs them read-only as well: ``readonly=2``, which
still lets the allowed settings apply).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agentstream.clickhouse.credentials import Role
from agentstream.clickhouse.engine import Engine
from agentstream.clickhouse.errors import ACCESS_DENIED, READONLY, GatewayError

# Table functions that only compute or read this engine's own tables.
SAFE_TABLE_FUNCTIONS = frozenset(
    {
        "numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateseries", "values",
        "generaterandom", "null", "format", "view", "viewifpermitted", "viewexplain", "merge",
        "loop", "mergetreeindex", "fuzzjson", "fuzzquery",
    }
)  # fmt: skip
# Table engines that keep their data inside the engine's own directory.
SAFE_ENGINES = frozenset(
    {
        "MergeTree", "ReplacingMergeTree", "SummingMergeTree", "AggregatingMergeTree",
        "CollapsingMergeTree", "VersionedCollapsingMergeTree", "CoalescingMergeTree", "Memory",
        "Null", "Log", "TinyLog", "StripeLog", "Set", "Join", "Buffer", "Merge", "View",
        "MaterializedView", "LiveView", "WindowView",
    }
)  # fmt: skip
# Ordinary functions that reach outside the engine: `file` reads a file as the sink's user,
# `catboostEvaluate` loads a library from a path.
DENIED_FUNCTIONS = frozenset({"file", "catboostevaluate", "python", "pandas", "arrowstream", "pyreader"})

READ_STATEMENTS = frozenset(
    {
        "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SelectQuery", "ShowTables",
        "ShowTablesQuery", "ShowColumnsQuery", "ShowIndexesQuery", "ShowCreateTableQuery",
        "ShowCreateViewQuery", "ShowCreateDatabaseQuery", "ShowCreateDictionaryQuery",
        "DescribeQuery", "DescribeCacheQuery", "ExistsTableQuery", "ExistsViewQuery",
        "ExistsDatabaseQuery", "ExistsDictionaryQuery", "Explain", "ExplainQuery",
        "ShowProcesslistQuery", "ShowDatabases", "ShowEngineQuery", "ShowFunctionsQuery",
        "ShowSettingQuery", "CheckQuery", "CheckAllTablesQuery",
    }
)  # fmt: skip
WRITE_STATEMENTS = frozenset(
    {
        "InsertQuery", "AlterQuery", "AlterCommand", "CreateQuery", "DropQuery", "RenameQuery",
        "OptimizeQuery", "DeleteQuery", "UndropQuery", "CreateFunctionQuery", "DropFunctionQuery",
        "CreateIndexQuery", "DropIndexQuery", "UpdateQuery", "TruncateQuery",
    }
)  # fmt: skip
# ALTER commands that read or write outside the table's own data (another server, a path).
_DENIED_ALTER = re.compile(r"AlterCommand (?:FETCH|FREEZE|UNFREEZE|MOVE|ATTACH|REPLACE)", re.IGNORECASE)

# Settings a client may pass (URL parameters or SETTINGS): output shape and self-limits for everyone,
# insert behaviour for the write role. Anything else could lift a limit or point at a file.
READ_SETTINGS = frozenset(
    {
        "readonly", "max_threads", "max_block_size", "max_result_rows", "max_result_bytes",
        "result_overflow_mode", "final", "join_use_nulls", "date_time_output_format",
        "date_time_input_format", "output_format_json_quote_64bit_integers",
        "output_format_json_quote_64bit_floats", "output_format_json_quote_denormals",
        "output_format_json_quote_decimals", "output_format_json_named_tuples_as_objects",
        "output_format_json_array_of_rows", "output_format_json_validate_utf8",
        "output_format_write_statistics", "output_format_decimal_trailing_zeros",
        "output_format_arrow_string_as_string", "output_format_arrow_low_cardinality_as_dictionary",
        "output_format_arrow_fixed_string_as_fixed_byte_array", "output_format_parquet_string_as_string",
        "output_format_native_encode_types_in_binary_format", "output_format_csv_crlf_end_of_line",
        "output_format_tsv_crlf_end_of_line", "format_csv_delimiter", "format_csv_null_representation",
        "format_tsv_null_representation", "max_execution_time", "cast_string_to_dynamic_use_inference",
    }
)  # fmt: skip
WRITE_SETTINGS = READ_SETTINGS | frozenset(
    {
        "insert_deduplication_token", "insert_deduplicate", "max_insert_block_size",
        "min_insert_block_size_rows", "min_insert_block_size_bytes", "optimize_on_insert",
        "input_format_null_as_default", "input_format_skip_unknown_fields",
        "input_format_defaults_for_omitted_fields", "input_format_import_nested_json",
        "input_format_allow_errors_num", "input_format_allow_errors_ratio",
        "input_format_avro_allow_missing_fields", "input_format_avro_null_as_default",
        "input_format_native_decode_types_in_binary_format", "mutations_sync", "alter_sync",
        "lightweight_deletes_sync", "allow_experimental_lightweight_delete",
    }
)  # fmt: skip
# Setting values that only tighten what the endpoint enforces.
_TIGHTEN_ONLY = {"readonly": frozenset({"1"})}


@dataclass(frozen=True)
class Node:
    """One node of a parsed statement: its depth in the tree and its label (``Function file``)."""

    depth: int
    label: str

    @property
    def kind(self) -> str:
        return self.label.split(" ", 1)[0]

    @property
    def name(self) -> str:
        return self.label.split(" ", 2)[1] if " " in self.label else ""


def parse_tree(dump: str) -> list[Node]:
    """The nodes of an ``EXPLAIN AST`` dump (one per line, one space of indent per level)."""
    nodes = []
    for line in dump.splitlines():
        label = line.lstrip(" ")
        if label:
            nodes.append(Node(len(line) - len(label), re.sub(r" \(children \d+\)$", "", label)))
    return nodes


def denied(text: str) -> GatewayError:
    """The error for a refused statement (the client sees what was refused, never why it was asked)."""
    return GatewayError.of(ACCESS_DENIED, f"Not allowed through the query endpoint: {text}", "ACCESS_DENIED")


def check_settings(settings: Mapping[str, str], role: Role, *, timeout: float) -> None:
    """Refuse settings outside the role's allow-list, ``readonly`` other than 1 and a longer time limit.

    Raises:
        GatewayError: ACCESS_DENIED naming the setting.
    """
    allowed = WRITE_SETTINGS if role is Role.WRITE else READ_SETTINGS
    for name, value in settings.items():
        if name not in allowed:
            raise denied(f"changing the setting '{name}'")
        values = _TIGHTEN_ONLY.get(name)
        if values is not None and value.strip() not in values:
            raise denied(f"'{name}' = {value}")
        if name == "max_execution_time":
            try:
                seconds = float(value)
            except ValueError:
                raise denied(f"'{name}' = {value}") from None
            if not 0 < seconds <= timeout:
                raise denied(f"'{name}' above the endpoint's limit of {timeout:g} s")


@dataclass(frozen=True)
class Catalogue:
    """The engine's own table functions and table engines (names as it spells them)."""

    table_functions: frozenset[str]
    engines: frozenset[str]

    @classmethod
    def load(cls, query: Callable[[str], str]) -> Catalogue:
        """Read the lists from the engine (``query`` runs SQL and returns TabSeparated text)."""
        functions = query("SELECT name FROM system.table_functions").split()
        engines = query("SELECT name FROM system.table_engines").split()
        return cls(frozenset(f.lower() for f in functions), frozenset(engines))


_PAIR = r"\s*[A-Za-z_]\w*\s*=\s*(?:'(?:[^'\\]|\\.)*'|-?\d+(?:\.\d+)?|[A-Za-z_]\w*)\s*"
_PAIRS = re.compile(f"{_PAIR}(?:,{_PAIR})*")
_ONE_PAIR = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*('(?:[^'\\]|\\.)*'|[^,\s]+)\s*,?")
_TABLE_SETTINGS = re.compile(r"^SETTINGS (.*)\Z", re.MULTILINE | re.DOTALL)
_SESSION_STATEMENT = re.compile(r"(?:SET|USE)\b", re.IGNORECASE)
_WITH_OUTPUT = frozenset({"SelectWithUnionQuery", "SelectIntersectExceptQuery", "InsertQuery", "Explain"})


def _children(nodes: list[Node], index: int) -> list[Node]:
    depth = nodes[index].depth
    children = []
    for node in nodes[index + 1 :]:
        if node.depth <= depth:
            break
        if node.depth == depth + 1:
            children.append(node)
    return children


def _parent(nodes: list[Node], index: int) -> Node:
    depth = nodes[index].depth
    for node in reversed(nodes[:index]):
        if node.depth < depth:
            return node
    return nodes[0]


def parse_pairs(text: str) -> dict[str, str]:
    """``a = 1, b = 'x'`` as a dict; only plain literals (a function call there could name a disk
    or a path).

    Raises:
        GatewayError: ACCESS_DENIED when ``text`` is anything else.
    """
    if not _PAIRS.fullmatch(text):
        raise denied(f"settings other than `name = literal` pairs: {text.strip()[:80]}")
    found = {}
    for name, value in _ONE_PAIR.findall(text):
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        found[name] = value
    return found


def _check_table_settings(canonical: str) -> None:
    # The engine's formatting puts a table's SETTINGS clause on its own line at the end.
    clause = _TABLE_SETTINGS.search(canonical)
    if clause is None:
        raise denied("this SETTINGS clause")
    for name in parse_pairs(clause.group(1)):
        if any(word in name for word in ("disk", "policy", "path")):
            raise denied(f"the table setting '{name}'")


def check_tree(nodes: list[Node], role: Role, catalogue: Catalogue, canonical: str = "") -> None:
    """Refuse a parsed statement the role may not run.

    Raises:
        GatewayError: ACCESS_DENIED (READONLY for a write by the read role).
    """
    if not nodes:
        raise denied("an empty statement")
    top = nodes[0]
    if any(node.depth == 0 for node in nodes[1:]):
        raise denied("more than one statement")
    if top.kind not in READ_STATEMENTS:
        if top.kind not in WRITE_STATEMENTS:
            raise denied(f"{top.kind} statements")
        if role is not Role.WRITE:
            raise GatewayError.of(
                READONLY,
                f"Cannot run {top.kind} with the read credential: it is read-only",
                "READONLY",
            )
    for index, node in enumerate(nodes):
        if node.kind in _WITH_OUTPUT and any(
            child.kind == "Literal" for child in _children(nodes, index)
        ):  # a query's own literal child is its INTO OUTFILE or FROM INFILE (or their COMPRESSION)
            raise denied("INTO OUTFILE / FROM INFILE")
        if node.kind == "Function":
            name = node.name
            lowered = name.lower()
            if lowered in DENIED_FUNCTIONS:
                raise denied(f"the function {name}()")
            if lowered in catalogue.table_functions and lowered not in SAFE_TABLE_FUNCTIONS:
                raise denied(f"the table function {name}()")
            if name in catalogue.engines and name not in SAFE_ENGINES:
                raise denied(f"the table engine {name}")
        elif node.kind == "Set":
            if role is Role.WRITE and _parent(nodes, index).label == "Storage definition":
                _check_table_settings(canonical)  # a table's own settings, in CREATE TABLE
                continue
            raise denied(
                "SETTINGS in the statement: pass allowed settings as request parameters "
                "(clickhouse-connect: settings=...)"
            )
        elif node.kind in ("Dictionary", "DictionarySource", "FunctionWithKeyValueArguments"):
            raise denied("dictionaries")
        elif node.kind == "AlterCommand" and _DENIED_ALTER.match(node.label):
            raise denied(node.label.replace("AlterCommand ", "ALTER ... "))


def _as_parameter(text: str) -> str:
    # A String query parameter is read with ClickHouse's escaping: the text must survive it whole.
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


class Inspector:
    """Parses statements with the engine's own parser (nothing runs) and judges them for a role."""

    def __init__(self, engine: Engine):
        self._engine = engine
        self._catalogue: Catalogue | None = None

    def catalogue(self) -> Catalogue:
        """The engine's table functions and engines, read once."""
        if self._catalogue is None:
            self._catalogue = Catalogue.load(
                lambda sql: self._engine.execute(sql, "TabSeparated", database="system").bytes().decode()
            )
        return self._catalogue

    def inspect(
        self,
        text: str,
        role: Role,
        *,
        settings: Mapping[str, str],
        params: Mapping[str, str],
    ) -> tuple[str, list[Node]]:
        """The statement as the engine formats it (one statement, no comments) and its parse tree.

        The text is given to the engine as a parameter, never as SQL: several statements are a
        syntax error here instead of running one after another.

        Raises:
            GatewayError: SYNTAX_ERROR (several statements included) or the role may not run it.
        """
        formatted = self._engine.execute(
            "SELECT formatQuery({statement:String})",
            "TabSeparatedRaw",
            database="system",
            settings=settings,
            params={"statement": _as_parameter(text)},
        )
        canonical = (formatted.bytes() or b"").decode().rstrip("\n")
        if _SESSION_STATEMENT.match(canonical):
            raise denied(
                "SET and USE, which need a session the gateway does not keep: pass allowed settings "
                "and the database with each request"
            )
        tree = self._engine.execute(
            "EXPLAIN AST " + canonical, "TabSeparatedRaw", settings=settings, params=params
        )
        nodes = parse_tree((tree.bytes() or b"").decode())
        check_tree(nodes, role, self.catalogue(), canonical)
        return canonical, nodes
