"""A per-schema Avro body writer, generated as Python source: the fast path of :mod:`.serde`.

fastavro's writer costs ~15 µs per Span record before it writes a byte (schema walk, logical-type
and union checks per value); the OTLP ingest encodes tens of thousands of records a second. This
module turns a record schema into one straight-line function that appends the Avro binary of
each field. It is deliberately strict: a value of any type other than the plain one it expects
(``str`` for strings, ``int`` for longs, ``dict`` for maps, ...), a missing field, an unknown enum
symbol or an out-of-range number raises :class:`Fallback`, and the caller then encodes the record
with fastavro, which owns every lenient and error case (defaults, coercions, error messages). For
every record it accepts, the bytes are exactly fastavro's (property-tested over every shipped
schema in tests/unit/test_avro_writer.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

__all__ = ["Fallback", "compile_writer"]

_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


class Fallback(Exception):
    """The record is not one the specialised writer takes: encode it with fastavro instead."""


def zigzag_varint(n: int) -> bytes:
    """Avro's encoding of an ``int`` or ``long``."""
    return _unsigned((n << 1) ^ (n >> 63))


def _unsigned(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _High(dict[int, bytes]):
    """Varints of the high bits of large longs (timestamps share them for seconds at a time)."""

    def __missing__(self, n: int) -> bytes:
        encoded = _unsigned(n)
        if len(self) < 1 << 12:
            self[n] = encoded
        return encoded


class _Longs(dict[int, bytes]):
    """Zig-zag varints of Avro longs: small ones (lengths, counts, token ids) memoised, large ones
    (timestamps) from their three low 7-bit groups and the memoised varint of the rest."""

    _LOW, _HIGH = -(1 << 63), 1 << 63
    _LIMIT = 1 << 16

    def __init__(self) -> None:
        super().__init__()
        self.high = _High()

    def __missing__(self, n: Any) -> bytes:
        if type(n) is not int or not self._LOW <= n < self._HIGH:
            raise Fallback(f"not a {type(self).__name__[1:-1].lower()}: {n!r}")
        z = (n << 1) ^ (n >> 63)
        if z >= 1 << 21:
            low = bytes((z & 0x7F | 0x80, z >> 7 & 0x7F | 0x80, z >> 14 & 0x7F | 0x80))
            return low + self.high[z >> 21]
        encoded = _unsigned(z)
        if len(self) < self._LIMIT:
            self[n] = encoded
        return encoded


class _Keys(dict[str, bytes]):
    """Avro encodings (length + UTF-8) of map keys, memoised: attribute names repeat."""

    _LIMIT = 1 << 14

    def __init__(self, longs: _Longs) -> None:
        super().__init__()
        self._longs = longs

    def __missing__(self, key: Any) -> bytes:
        if type(key) is not str:  # (a str subclass hashes as its str: same bytes)
            raise Fallback(f"not a string map key: {key!r}")
        encoded = key.encode()
        encoded = self._longs[len(encoded)] + encoded
        if len(self) < self._LIMIT and len(encoded) < 256:
            self[key] = encoded
        return encoded


class _Ints(_Longs):
    _LOW, _HIGH = -(1 << 31), 1 << 31


def _f32(x: Any) -> bytes:
    if type(x) is not float or x != x:  # NaN payloads: fastavro's C cast decides
        raise Fallback("not a plain float")
    try:
        return _F32.pack(x)
    except OverflowError:  # fastavro's cast gives inf: its behaviour, not ours to copy
        raise Fallback("float out of range") from None


def _f64(x: Any) -> bytes:
    if type(x) is not float:
        raise Fallback("not a float")
    return _F64.pack(x)


class _Gen:
    """Emits the source of one writer function; ``o`` is the bytearray written, ``L``/``I`` are varint memos."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.named: dict[str, Any] = {}
        self.n = 0

    def var(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    def const(self, value: Any) -> str:
        name = self.var("C")
        self.consts[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def value(self, schema: Any, v: str, depth: int, namespace: str) -> None:  # noqa: C901 - one switch
        if isinstance(schema, str) and schema in self.named:
            schema = self.named[schema]
        elif isinstance(schema, str) and f"{namespace}.{schema}" in self.named:
            schema = self.named[f"{namespace}.{schema}"]
        if isinstance(schema, list):
            self.union(schema, v, depth, namespace)
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        if isinstance(kind, (dict, list)):
            self.value(kind, v, depth, namespace)
            return
        emit = self.emit
        if kind == "string":
            b = self.var("b")
            emit(depth, f"if type({v}) is not str: raise F")
            emit(depth, f"{b} = {v}.encode()")
            emit(depth, f"o += L[len({b})]; o += {b}")
        elif kind == "long":  # timestamps: inline, no memo miss (their high bits come memoised)
            z = self.var("z")
            emit(depth, f"if type({v}) is not int: raise F")
            emit(depth, f"{z} = ({v} << 1) ^ ({v} >> 63)")
            emit(depth, f"if {z} >= 2097152 and {z} < 18446744073709551616:")
            emit(depth + 1, f"o += bytes(({z} & 127 | 128, {z} >> 7 & 127 | 128, {z} >> 14 & 127 | 128))")
            emit(depth + 1, f"o += H[{z} >> 21]")
            emit(depth, f"else: o += L[{v}]")
        elif kind == "int":
            emit(depth, f"o += I[{v}]")
        elif kind == "boolean":
            emit(depth, f"if type({v}) is not bool: raise F")
            emit(depth, f"o += b'\\x01' if {v} else b'\\x00'")
        elif kind == "double":
            emit(depth, f"o += f64({v})")
        elif kind == "float":
            emit(depth, f"o += f32({v})")
        elif kind == "null":
            emit(depth, f"if {v} is not None: raise F")
        elif kind == "enum":
            self.register(schema, namespace)
            table = self.const({s: zigzag_varint(i) for i, s in enumerate(schema["symbols"])})
            emit(depth, f"if {v} not in {table}: raise F  # str enums too: their hash is the str's")
            emit(depth, f"o += {table}[{v}]")
        elif kind == "array":
            self.array(schema["items"], v, depth, namespace)
        elif kind == "map":
            m, k, x = self.var("m"), self.var("k"), self.var("x")
            emit(depth, f"{m} = {v}")
            emit(depth, f"if type({m}) is not dict: raise F")
            emit(depth, f"if {m}:")
            emit(depth + 1, f"o += L[len({m})]")
            emit(depth + 1, f"for {k}, {x} in {m}.items():")
            emit(depth + 2, f"o += K[{k}]")  # map keys (attribute names) repeat: memoised
            self.value(schema["values"], x, depth + 2, namespace)
            emit(depth, "o += b'\\x00'")
        elif kind == "record":
            ns = self.register(schema, namespace)
            r = self.var("r")
            emit(depth, f"{r} = {v}")
            emit(depth, f"if type({r}) is not dict: raise F")
            for field in schema["fields"]:
                fv = self.var("v")
                emit(depth, f"{fv} = {r}[{field['name']!r}]")
                self.value(field["type"], fv, depth, ns)
        else:  # bytes, fixed, named references the generator does not know: fastavro writes them
            emit(depth, "raise F")

    def register(self, schema: dict[str, Any], namespace: str) -> str:
        name = schema["name"]
        ns = schema.get("namespace", namespace) if "." not in name else name.rsplit(".", 1)[0]
        self.named[name if "." in name else f"{ns}.{name}" if ns else name] = schema
        self.named.setdefault(name.rsplit(".", 1)[-1], schema)
        return ns or ""

    def array(self, items: Any, v: str, depth: int, namespace: str) -> None:
        emit = self.emit
        s = self.var("s")
        emit(depth, f"{s} = {v}")
        emit(depth, f"if type({s}) is not list and type({s}) is not tuple: raise F")
        if items in ("int", "long"):  # token ids: one join of memoised varints
            memo = "I" if items == "int" else "L"
            emit(depth, f"if {s}: o += L[len({s})]; o += b''.join([{memo}[i] for i in {s}])")
            emit(depth, "o += b'\\x00'")
            return
        emit(depth, f"if {s}:")
        emit(depth + 1, f"o += L[len({s})]")
        x = self.var("x")
        emit(depth + 1, f"for {x} in {s}:")
        self.value(items, x, depth + 2, namespace)
        emit(depth, "o += b'\\x00'")

    def union(self, branches: list[Any], v: str, depth: int, namespace: str) -> None:
        others = [b for b in branches if b != "null"]
        if len(branches) != 2 or len(others) != 1:  # other unions: fastavro picks the branch
            self.emit(depth, "raise F")
            return
        null_index = branches.index("null")
        self.emit(depth, f"if {v} is None: o += {zigzag_varint(null_index)!r}")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"o += {zigzag_varint(1 - null_index)!r}")
        self.value(others[0], v, depth + 1, namespace)


def compile_writer(definition: dict[str, Any]) -> Callable[[dict[str, Any]], bytes]:
    """A function writing the Avro binary body of a record of ``definition`` (a record schema, as
    JSON-decoded); it raises :class:`Fallback` for any record it does not take."""
    gen = _Gen()
    gen.emit(1, "o = bytearray()")
    gen.value(definition, "record", 1, definition.get("namespace", ""))
    gen.emit(1, "return bytes(o)")
    source = "def write(record):\n" + "\n".join(gen.lines) + "\n"
    longs = _Longs()
    scope: dict[str, Any] = {
        "F": Fallback,
        "L": longs,
        "H": longs.high,
        "K": _Keys(longs),
        "I": _Ints(),
        "f32": _f32,
        "f64": _f64,
    }
    scope.update(gen.consts)
    exec(compile(source, f"<avro writer {definition.get('name')}>", "exec"), scope)  # noqa: S102 - our own source
    writer: Callable[[dict[str, Any]], bytes] = scope["write"]
    return writer
