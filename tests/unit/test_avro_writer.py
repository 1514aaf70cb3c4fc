"""The specialised Avro writer (schemas/avro_writer.py) writes exactly fastavro's bytes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from agentstream.schemas import SCHEMA_FILES, load_schema
from agentstream.schemas.avro_writer import Fallback, compile_writer
from agentstream.schemas.serde import _Encoder, encode_body

_LONG = st.one_of(
    st.integers(min_value=-64, max_value=64),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=1_600_000_000_000_000, max_value=1_900_000_000_000_000),  # timestamps
)
_INT = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_TEXT = st.text(max_size=40)
_FLOAT32 = st.floats(width=32, allow_nan=False)


def _strategy(schema: Any, named: dict[str, Any], *, odd: bool) -> st.SearchStrategy[Any]:  # noqa: C901
    """Values of ``schema``: plain ones, and with ``odd`` also the lenient ones fastavro coerces
    (floats for longs, ints for doubles, NaN, out-of-range numbers) or refuses."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        return st.one_of(*(_strategy(branch, named, odd=odd) for branch in schema))
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(kind, (dict, list)):
        return _strategy(kind, named, odd=odd)
    extra: list[st.SearchStrategy[Any]] = []
    if kind == "string":
        base: st.SearchStrategy[Any] = _TEXT
        extra = [st.just("\ud800"), st.integers()]
    elif kind == "long":
        base = _LONG
        extra = [st.floats(min_value=-1e6, max_value=1e6), st.booleans(), st.just(2**63), st.just("1")]
    elif kind == "int":
        base = _INT
        extra = [st.just(2**31), st.floats(min_value=-1e3, max_value=1e3), st.booleans()]
    elif kind == "double":
        base = st.floats()
        extra = [st.integers(min_value=-(2**60), max_value=2**60), st.just(10**400), st.booleans()]
    elif kind == "float":
        base = _FLOAT32
        extra = [st.floats(), st.just(float("nan")), st.integers(min_value=-1000, max_value=1000)]
    elif kind == "boolean":
        base = st.booleans()
        extra = [st.integers(min_value=0, max_value=2), st.none()]
    elif kind == "null":
        base = st.none()
    elif kind == "enum":
        named[schema["name"]] = schema
        base = st.sampled_from(schema["symbols"])
        extra = [st.just("no-such-symbol")]
    elif kind == "array":
        items = _strategy(schema["items"], named, odd=odd)
        base = st.lists(items, max_size=6)
        extra = [st.tuples(items, items)]
    elif kind == "map":
        base = st.dictionaries(_TEXT, _strategy(schema["values"], named, odd=odd), max_size=6)
        extra = [st.dictionaries(st.integers(), _TEXT, min_size=1, max_size=2)]
    elif kind == "record":
        named[schema["name"]] = schema
        fields = {f["name"]: _strategy(f["type"], named, odd=odd) for f in schema["fields"]}
        base = st.fixed_dictionaries(fields)
        if odd and schema["fields"]:  # a field left out: fastavro takes its default (or refuses)
            base = st.one_of(base, base.map(lambda r: dict(list(r.items())[1:])))
    else:
        raise AssertionError(f"no strategy for {kind!r}")
    return st.one_of(base, *extra) if odd and extra else base


def _fastavro(schema: Any, record: dict[str, Any]) -> bytes | type[Exception]:
    try:
        return encode_body(schema, record)
    except Exception as e:  # noqa: BLE001 - fastavro lets e.g. OverflowError through: so must we
        return type(e)


def _ours(encoder: _Encoder, record: dict[str, Any]) -> bytes | type[Exception]:
    try:
        return encoder(record)
    except Exception as e:  # noqa: BLE001
        return type(e)


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_plain_records_take_the_fast_path_and_match_fastavro(name: str) -> None:
    schema = load_schema(name)
    write = compile_writer(schema.definition)

    @hypothesis_settings(max_examples=150, deadline=None)
    @given(record=_strategy(schema.definition, {}, odd=False))
    def check(record: dict[str, Any]) -> None:
        assert write(record) == encode_body(schema, record)

    check()


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_any_record_encodes_as_fastavro_does_or_fails_as_it_does(name: str) -> None:
    schema = load_schema(name)
    encoder = _Encoder(schema)

    @hypothesis_settings(max_examples=200, deadline=None)
    @given(record=_strategy(schema.definition, {}, odd=True))
    def check(record: dict[str, Any]) -> None:
        expected, got = _fastavro(schema, record), _ours(encoder, record)
        if isinstance(expected, bytes) and not isinstance(got, bytes):
            # only the memoised token-id tail refuses what fastavro coerces (test_schemas owns that)
            tokens = [*record.get("prompt_token_ids", ()), *record.get("response_token_ids", ())]
            assert any(type(t) is not int for t in tokens), got
        elif isinstance(expected, bytes):
            assert got == expected
        else:  # fastavro refuses it: so do we (the fallback is fastavro)
            assert got == expected or not isinstance(got, bytes)

    check()


def test_odd_values_fall_back_to_fastavro() -> None:
    schema = load_schema("span")
    write = compile_writer(schema.definition)
    from agentstream.schemas.span import Span

    datum = Span(
        trace_id="a" * 32, span_id="b" * 16, rollout_id="r", name="n", start_time=1, end_time=2
    ).to_avro()
    assert write(datum) == encode_body(schema, datum)
    for field, value in [
        ("start_time", 1.0),
        ("start_time", 2**63),
        ("kind", "nope"),
        ("attributes", {1: "x"}),
        ("float_attributes", {"x": 1}),
        ("response_logprobs", [math.nan]),
        ("prompt_token_ids", [2**31]),
    ]:
        with pytest.raises(Fallback):
            write({**datum, field: value})
    with pytest.raises(KeyError):
        write({k: v for k, v in datum.items() if k != "name"})
