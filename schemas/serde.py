"""Avro serialization with fastavro, in two wire formats.

* **Single-object encoding** (default, Avro spec): ``C3 01`` + 8-byte CRC-64-AVRO fingerprint of the
  writer schema + the Avro binary body. Readers find writer schemas by fingerprint in a
  :class:`SchemaStore` (the shipped schemas, plus any resolver such as the schemas topic).
* **Confluent Schema Registry** wire format, when a registry is configured: ``00`` + 4-byte
  big-endian schema id + body.

Serializers are callables ``(record, ctx) -> bytes`` and deserializers ``(data, ctx) -> dict``, as in
confluent-kafka-python; ``ctx`` is an optional ``SerializationContext`` (only its ``topic`` is used).
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from .avro import AvroSchema, all_schemas
from .avro_writer import Fallback, compile_writer, zigzag_varint

SOE_MAGIC = b"\xc3\x01"
SOE_HEADER_LEN = 10
CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_LEN = 5


class SerializationError(ValueError):
    """A record could not be encoded or decoded; the message says why."""


class MalformedRecordError(SerializationError):
    """Bytes that are not a valid record of a known schema."""


class UnknownSchemaError(MalformedRecordError):
    """The writer schema of a record (fingerprint or registry id) cannot be found."""


class IncompatibleSchemaError(MalformedRecordError):
    """The writer schema of a record cannot be read as the reader schema: another record type, or a
    field the reader requires (no default) that the writer lacks."""


@dataclass(frozen=True, slots=True)
class Framing:
    """Where a framed record's body starts and how to find its writer schema."""

    encoding: Literal["single-object", "confluent"]
    #: 8-byte fingerprint (single-object) or the registry schema id (confluent)
    schema_key: bytes | int
    header_len: int


def read_framing(data: bytes | None) -> Framing:
    """Parse the header of a framed record without decoding its body."""
    if not data:
        raise MalformedRecordError("empty record")
    if data[:2] == SOE_MAGIC:
        if len(data) < SOE_HEADER_LEN:
            raise MalformedRecordError(f"truncated single-object header ({len(data)} bytes)")
        return Framing("single-object", bytes(data[2:SOE_HEADER_LEN]), SOE_HEADER_LEN)
    if data[0] == CONFLUENT_MAGIC:
        if len(data) < CONFLUENT_HEADER_LEN:
            raise MalformedRecordError(f"truncated Confluent header ({len(data)} bytes)")
        return Framing("confluent", struct.unpack(">I", data[1:5])[0], CONFLUENT_HEADER_LEN)
    raise MalformedRecordError(
        f"not an Avro single-object or Confluent-framed record (starts with {bytes(data[:4]).hex()})"
    )


class SchemaStore:
    """Writer schemas by fingerprint: the shipped ones, those added later, and a resolver for misses.

    The resolver (e.g. a reader of the schemas topic) is called with an unknown fingerprint and may
    return the schema; thread-safe.
    """

    def __init__(
        self,
        schemas: Iterable[AvroSchema] = (),
        resolver: Callable[[bytes], AvroSchema | None] | None = None,
    ) -> None:
        self._by_fingerprint: dict[bytes, AvroSchema] = {}
        self._lock = threading.Lock()
        self.resolver = resolver
        for schema in schemas:
            self.add(schema)

    @classmethod
    def shipped(cls, resolver: Callable[[bytes], AvroSchema | None] | None = None) -> SchemaStore:
        return cls(all_schemas(), resolver)

    def add(self, schema: AvroSchema) -> None:
        with self._lock:
            self._by_fingerprint[schema.fingerprint] = schema

    def get(self, fingerprint: bytes) -> AvroSchema:
        schema = self._by_fingerprint.get(fingerprint)
        if schema is None and self.resolver is not None:
            schema = self.resolver(fingerprint)
            if schema is not None:
                if schema.fingerprint != fingerprint:
                    raise UnknownSchemaError(
                        f"resolver returned a schema with fingerprint {schema.fingerprint.hex()} "
                        f"for {fingerprint.hex()}"
                    )
                self.add(schema)
        if schema is None:
            raise UnknownSchemaError(f"unknown writer schema fingerprint {fingerprint.hex()}")
        return schema

    def __contains__(self, fingerprint: bytes) -> bool:
        return fingerprint in self._by_fingerprint


def _registry_client(url_or_client: Any) -> Any:
    if not isinstance(url_or_client, str):
        return url_or_client
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "A schema registry URL is configured but its client is missing: "
            "pip install 'agentstream[registry]'"
        ) from e
    return SchemaRegistryClient.new_client({"url": url_or_client})


def encode_body(schema: AvroSchema, record: dict[str, Any]) -> bytes:
    """Avro binary of ``record`` (no framing)."""
    buf = io.BytesIO()
    try:
        schemaless_writer(buf, schema.parsed, record)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise SerializationError(f"cannot encode {schema.name}: {e}") from e
    return buf.getvalue()


class _Varints(dict[int, bytes]):
    """Avro encodings of integers, memoised: token ids repeat, and a dict lookup is ~20x cheaper
    than encoding an array item generically."""

    _LIMIT = 1 << 18  # bounded memory (a few MB) whatever the vocabulary

    def __init__(self, bits: int) -> None:
        super().__init__()
        self._low, self._high = -(1 << (bits - 1)), 1 << (bits - 1)

    def __missing__(self, n: Any) -> bytes:
        if not isinstance(n, int) or not self._low <= n < self._high:
            raise SerializationError(f"{n!r} is not a {'long' if self._high > 1 << 31 else 'int'}")
        encoded = zigzag_varint(n)
        if len(self) < self._LIMIT:
            self[n] = encoded
        return encoded

    def array(self, items: Any) -> bytes:
        if not items:
            return b"\x00"
        try:
            return zigzag_varint(len(items)) + b"".join(map(self.__getitem__, items)) + b"\x00"
        except TypeError as e:  # unhashable or not a sequence
            raise SerializationError(f"not an array of integers: {e}") from e


_NO_DEFAULT = object()
_INT_VARINTS = _Varints(32)
_LONG_VARINTS = _Varints(64)


class _Encoder:
    """Encodes a record with the schema's specialised writer (:mod:`.avro_writer`), else (a record
    it does not take) with fastavro, except a trailing run of ``array<int|long>`` fields, which is
    appended from memoised varints. Avro encodes a record as the concatenation of its fields, so
    the bytes are exactly fastavro's either way."""

    def __init__(self, schema: AvroSchema) -> None:
        self.schema = schema
        self.fast = compile_writer(schema.definition)
        fields = schema.definition["fields"]
        tail: list[tuple[str, _Varints, Any]] = []
        for field in reversed(fields):
            kind = field["type"]
            if (
                isinstance(kind, dict)
                and kind.get("type") == "array"
                and kind.get("items") in ("int", "long")
            ):
                varints = _INT_VARINTS if kind["items"] == "int" else _LONG_VARINTS
                tail.append((field["name"], varints, field.get("default", _NO_DEFAULT)))
            else:
                break
        self.tail = tail[::-1]
        head = fields[: len(fields) - len(tail)]
        self.head = AvroSchema.from_definition(dict(schema.definition, fields=head)) if tail else schema

    def __call__(self, record: dict[str, Any]) -> bytes:
        try:
            return self.fast(record)
        except (Fallback, KeyError, TypeError, ValueError):  # fastavro decides (and says what is wrong)
            pass
        return self.slow(record)

    def slow(self, record: dict[str, Any]) -> bytes:
        """The record's bytes from fastavro (and the memoised tail)."""
        body = encode_body(self.head, record)
        if not self.tail:
            return body
        parts = [body]
        for name, varints, default in self.tail:
            items = record.get(name, default)
            if items is _NO_DEFAULT:
                raise SerializationError(f"cannot encode {self.schema.name}: no value for {name!r}")
            parts.append(varints.array(items))
        return b"".join(parts)


class AvroSerializer:
    """Encode records of one schema, single-object framed, or Confluent framed with a registry.

    Args:
        schema: the writer schema.
        registry: a Schema Registry URL or ``SchemaRegistryClient``; ``None`` for single-object encoding.
        subject: registry subject; default ``<topic>-value`` (TopicNameStrategy) when the context names a
            topic, else the record's full name.
    """

    def __init__(self, schema: AvroSchema, registry: Any = None, subject: str | None = None) -> None:
        self.schema = schema
        self._registry = _registry_client(registry) if registry is not None else None
        self._subject = subject
        self._ids: dict[str, int] = {}
        self._soe_header = SOE_MAGIC + schema.fingerprint
        self._encode = _Encoder(schema)

    def _schema_id(self, registry: Any, topic: str | None) -> int:
        subject = self._subject or (f"{topic}-value" if topic else self.schema.name)
        schema_id = self._ids.get(subject)
        if schema_id is None:
            from confluent_kafka.schema_registry import Schema

            schema_id = registry.register_schema(subject, Schema(self.schema.json, "AVRO"))
            self._ids[subject] = schema_id
        return schema_id

    def header(self, topic: str | None = None) -> bytes:
        if self._registry is None:
            return self._soe_header
        return bytes([CONFLUENT_MAGIC]) + struct.pack(">I", self._schema_id(self._registry, topic))

    def __call__(self, record: dict[str, Any], ctx: Any = None) -> bytes:
        topic = getattr(ctx, "topic", None)
        return self.header(topic) + self._encode(record)


class AvroDeserializer:
    """Decode framed records of any known writer schema into dicts shaped by ``reader_schema``.

    Schema evolution follows Avro resolution: fields the writer lacks take the reader's default,
    fields the reader lacks are skipped. Records whose bytes do not decode exactly raise
    :class:`MalformedRecordError`.
    """

    def __init__(
        self,
        reader_schema: AvroSchema | None = None,
        store: SchemaStore | None = None,
        registry: Any = None,
    ) -> None:
        self.reader_schema = reader_schema
        self.store = store or SchemaStore.shipped()
        self._registry = _registry_client(registry) if registry is not None else None
        self._by_id: dict[int, AvroSchema] = {}

    def writer_schema(self, framing: Framing) -> AvroSchema:
        if framing.encoding == "single-object":
            assert isinstance(framing.schema_key, bytes)
            return self.store.get(framing.schema_key)
        schema_id = framing.schema_key
        assert isinstance(schema_id, int)
        schema = self._by_id.get(schema_id)
        if schema is None:
            if self._registry is None:
                raise UnknownSchemaError(
                    f"Confluent-framed record (schema id {schema_id}) but no schema registry is configured"
                )
            try:
                registered = self._registry.get_schema(schema_id)
            except Exception as e:
                raise UnknownSchemaError(f"schema id {schema_id} not found in the registry: {e}") from e
            schema = AvroSchema.from_definition(registered.schema_str)
            self._by_id[schema_id] = schema
        return schema

    def __call__(self, data: bytes, ctx: Any = None) -> dict[str, Any]:
        framing = read_framing(data)
        writer = self.writer_schema(framing)
        if self.reader_schema is not None and writer.name != self.reader_schema.name:
            raise IncompatibleSchemaError(
                f"a {writer.name} record where {self.reader_schema.name} was expected"
            )
        return decode_body(writer, data, framing.header_len, self.reader_schema)


def decode_body(
    writer: AvroSchema, data: bytes, offset: int = 0, reader: AvroSchema | None = None
) -> dict[str, Any]:
    """Decode the Avro body at ``data[offset:]``; every byte must belong to the record."""
    buf = io.BytesIO(data)
    buf.seek(offset)
    try:
        # resolve only against a reader schema other than the writer's
        resolve_to = reader if reader is not None and reader.fingerprint != writer.fingerprint else None
        record = schemaless_reader(buf, writer.parsed, resolve_to.parsed if resolve_to is not None else None)
    except SchemaResolutionError as e:  # not a ValueError: it used to escape and stop the consumer
        raise IncompatibleSchemaError(
            f"{writer.name} cannot be read as {reader.name if reader else '?'}: {e}"
        ) from e
    except (EOFError, ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError, OverflowError) as e:
        raise MalformedRecordError(f"undecodable {writer.name} body: {type(e).__name__}: {e}") from e
    if buf.tell() != len(data):
        raise MalformedRecordError(f"{len(data) - buf.tell()} trailing bytes after a {writer.name} record")
    return cast(dict[str, Any], record)  # an AvroSchema is a record schema: it decodes to a dict


_PROMOTIONS = {
    "int": {"int"},
    "long": {"int", "long"},
    "float": {"int", "long", "float"},
    "double": {"int", "long", "float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"string", "bytes"},
}


def resolution_problem(writer: AvroSchema, reader: AvroSchema) -> str | None:
    """Why records of ``writer`` cannot be read as ``reader`` (Avro schema resolution), or ``None``.

    Checked once per writer schema, so a consumer can refuse a whole schema without decoding its
    records: another record name, a reader field without default that the writer lacks, or a field
    whose types do not resolve. (Enum symbols and union branches are resolved per record.)
    """
    return _type_problem(writer.definition, reader.definition, "")


def _type_problem(w: Any, r: Any, path: str) -> str | None:
    w_name, r_name = _type_name(w), _type_name(r)
    if _is_reference(w_name) or _is_reference(r_name):
        return None  # a reference to a named type defined earlier: resolved per record
    if isinstance(r, list):  # a reader union takes any writer type one of its branches takes
        branches = w if isinstance(w, list) else [w]
        for branch in branches:
            if all(_type_problem(branch, option, path) is not None for option in r):
                return f"{path or 'record'}: {_type_name(branch)} fits no branch of the reader's union"
        return None
    if isinstance(w, list):  # writer union, reader not: each record's branch is checked when read
        if any(_type_problem(branch, r, path) is None for branch in w):
            return None
        return f"{path or 'record'}: no branch of the writer's union reads as {r_name}"
    if r_name in _PROMOTIONS:
        return None if w_name in _PROMOTIONS[r_name] else f"{path}: {w_name} cannot be read as {r_name}"
    if w_name != r_name:
        return f"{path or 'record'}: {w_name} cannot be read as {r_name}"
    if r_name == "array":
        return _type_problem(w["items"], r["items"], f"{path}[]")
    if r_name == "map":
        return _type_problem(w["values"], r["values"], f"{path}{{}}")
    if r_name == "record":
        if w["name"].split(".")[-1] != r["name"].split(".")[-1]:
            return f"{path or 'record'}: a {w['name']} where {r['name']} was expected"
        writer_fields = {f["name"]: f for f in w["fields"]}
        for field in r["fields"]:
            names = [field["name"], *field.get("aliases", ())]
            found = next((writer_fields[n] for n in names if n in writer_fields), None)
            where = f"{path}.{field['name']}" if path else field["name"]
            if found is None:
                if "default" not in field:
                    return f"the writer lacks {where}, which the reader requires (no default)"
                continue
            problem = _type_problem(found["type"], field["type"], where)
            if problem is not None:
                return problem
    return None


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_COMPLEX = {"record", "enum", "array", "map", "fixed", "union"}


def _is_reference(name: str) -> bool:
    return name not in _PRIMITIVES and name not in _COMPLEX


def _type_name(t: Any) -> str:
    if isinstance(t, list):
        return "union"
    if isinstance(t, dict):
        kind = t["type"]
        return kind if isinstance(kind, str) else _type_name(kind)
    return str(t)
