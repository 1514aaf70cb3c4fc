"""The event contracts: Avro files, pydantic models, and the two wire formats."""

from __future__ import annotations

import copy
import io
import json

import fastavro
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from agentstream.schemas import (
    MODELS,
    SCHEMA_FILES,
    AvroDeserializer,
    AvroSchema,
    AvroSerializer,
    MalformedRecordError,
    Reward,
    SchemaStore,
    Span,
    UnknownSchemaError,
    load_schema,
    read_framing,
)
from agentstream.schemas.serde import SOE_MAGIC, decode_body, encode_body
from agentstream.schemas.span import split_attributes

T0 = 1_700_000_000_000_000


def _span(**overrides: object) -> Span:
    fields: dict[str, object] = dict(
        trace_id="a" * 32,
        span_id="b" * 16,
        parent_span_id="c" * 16,
        rollout_id="ro-1",
        attempt_id="at-1",
        sequence_id=3,
        name="chat gemma",
        kind="llm",
        start_time=T0,
        end_time=T0 + 1500,
        status="ok",
        attributes={
            "gen_ai.request.model": "gemma",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.request.temperature": 0.2,
            "gen_ai.response.finish_reasons": ["stop"],
            "agentstream.streaming": False,
        },
        events=[{"name": "exception", "time": T0 + 10, "attributes": {"exception.type": "ValueError"}}],
        resource_attributes={"service.name": "bot"},
        prompt_token_ids=[1, 2, 3],
        response_token_ids=[4, 5],
    )
    fields.update(overrides)
    return Span.model_validate(fields)


@pytest.mark.parametrize("stem", sorted(SCHEMA_FILES))
def test_model_fields_match_the_avro_schema(stem: str) -> None:
    schema = load_schema(stem)
    model = MODELS[stem]
    avro_fields = set(schema.field_names)
    if stem == "span":  # the model keeps one attribute map; the wire splits it by type
        avro_fields -= {"int_attributes", "float_attributes", "bool_attributes", "array_attributes"}
    assert avro_fields == set(model.model_fields), f"{stem}.avsc and {model.__name__} disagree"
    assert schema.name == SCHEMA_FILES[stem]


def test_every_avro_field_added_after_the_first_has_a_default() -> None:
    # Required fields are the identity of each event; everything else must stay optional so
    # that schemas can evolve in both directions.
    required = {
        "span": {"trace_id", "span_id", "rollout_id", "name", "start_time", "end_time"},
        "reward": {"reward_id", "rollout_id", "value", "timestamp"},
        "rollout_event": {"event_id", "rollout_id", "type", "timestamp"},
        "triplet": {
            "triplet_id",
            "rollout_id",
            "span_id",
            "prompt_messages",
            "response",
            "created_at",
            "emitted_at",
        },
        "resource_version": {"resource_name", "version", "kind", "created_at"},
        "task": {"rollout_id", "attempt_number", "input", "config", "enqueued_at"},
        "rollout_state": {"rollout_id", "status", "version", "config", "created_at", "updated_at"},
        "version_metrics": {
            "resource_name",
            "resource_version",
            "window_start",
            "window_end",
            "rollouts",
            "succeeded",
            "failed",
            "rewards",
            "reward_sum",
            "reward_sum_squares",
            "latency_ms_sum",
            "latency_ms_max",
            "emitted_at",
        },
    }
    for stem, names in required.items():
        no_default = {f["name"] for f in load_schema(stem).definition["fields"] if "default" not in f}
        assert no_default == names, stem


def test_span_roundtrip_single_object_encoding() -> None:
    span = _span()
    data = AvroSerializer(Span.avro_schema())(span.to_avro())
    assert data[:2] == SOE_MAGIC and data[2:10] == Span.avro_schema().fingerprint
    decoded = Span.from_avro(AvroDeserializer(Span.avro_schema())(data))
    assert decoded == span
    assert decoded.attributes["gen_ai.usage.input_tokens"] == 12
    assert decoded.attributes["agentstream.streaming"] is False


def test_fingerprint_is_the_avro_spec_crc64() -> None:
    # Reference value computed with the Avro specification's CRC-64-AVRO algorithm.
    schema = AvroSchema.from_definition(
        {"type": "record", "name": "A", "fields": [{"name": "x", "type": "string"}]}
    )
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in schema.canonical.encode():
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    assert schema.fingerprint == fp.to_bytes(8, "little")


@hypothesis_settings(max_examples=60, deadline=None)
@given(
    attributes=st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.one_of(
            st.text(max_size=50),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.floats(allow_nan=False),
            st.booleans(),
            st.lists(st.text(max_size=10), max_size=5),
        ),
        max_size=8,
    ),
    tokens=st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=50),
)
def test_any_span_survives_the_wire(attributes: dict[str, object], tokens: list[int]) -> None:
    span = _span(attributes=attributes, prompt_token_ids=tokens)
    data = AvroSerializer(Span.avro_schema())(span.to_avro())
    assert Span.from_avro(AvroDeserializer(Span.avro_schema())(data)) == span


def test_split_attributes_by_type() -> None:
    split = split_attributes({"s": "x", "i": 1, "f": 1.5, "b": True, "a": ["x", 2]})
    assert split == {
        "attributes": {"s": "x"},
        "int_attributes": {"i": 1},
        "float_attributes": {"f": 1.5},
        "bool_attributes": {"b": True},
        "array_attributes": {"a": ["x", "2"]},
    }


def _evolved(schema: AvroSchema, field: dict[str, object]) -> AvroSchema:
    definition = copy.deepcopy(schema.definition)
    definition["fields"].append(field)
    return AvroSchema.from_definition(definition)


def test_schema_evolution_both_ways() -> None:
    """v2 adds a field with a default: v1 readers read v2 data, v2 readers read v1 data."""
    v1 = Reward.avro_schema()
    v2 = _evolved(v1, {"name": "channel", "type": "string", "default": "web"})
    store = SchemaStore([v1, v2])
    record_v1 = Reward(reward_id="rw-1", rollout_id="ro-1", value=0.5, timestamp=T0).to_avro()

    # Backward: data written with v1, read by a v2 consumer -> the default fills in.
    old_data = AvroSerializer(v1)(record_v1)
    new_reader = AvroDeserializer(v2, store)(old_data)
    assert new_reader["channel"] == "web" and new_reader["value"] == 0.5

    # Forward: data written with v2 (new field set), read by a v1 consumer -> the field is skipped.
    new_data = AvroSerializer(v2)({**record_v1, "channel": "email"})
    assert new_data[2:10] == v2.fingerprint != v1.fingerprint
    old_reader = AvroDeserializer(v1, store)(new_data)
    assert "channel" not in old_reader
    assert Reward.from_avro(old_reader) == Reward.from_avro(record_v1)


def test_unknown_writer_schema_uses_the_resolver_then_fails_clearly() -> None:
    v2 = _evolved(Reward.avro_schema(), {"name": "channel", "type": "string", "default": "web"})
    data = AvroSerializer(v2)(
        {**Reward(reward_id="rw-1", rollout_id="ro-1", value=1.0, timestamp=T0).to_avro(), "channel": "x"}
    )
    with pytest.raises(UnknownSchemaError, match=v2.fingerprint.hex()):
        AvroDeserializer(Reward.avro_schema(), SchemaStore.shipped())(data)
    asked: list[bytes] = []

    def resolver(fingerprint: bytes) -> AvroSchema | None:
        asked.append(fingerprint)
        return v2

    decoded = AvroDeserializer(Reward.avro_schema(), SchemaStore.shipped(resolver))(data)
    assert asked == [v2.fingerprint] and decoded["reward_id"] == "rw-1"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b'{"json": true}', "not an Avro"),
        (SOE_MAGIC + b"\x01\x02", "truncated single-object header"),
        (b"\x00\x01", "truncated Confluent header"),
    ],
)
def test_malformed_framing(data: bytes, message: str) -> None:
    with pytest.raises(MalformedRecordError, match=message):
        read_framing(data)


def test_truncated_and_overlong_bodies_are_malformed() -> None:
    schema = Reward.avro_schema()
    good = AvroSerializer(schema)(Reward(reward_id="r", rollout_id="ro", value=1.0, timestamp=T0).to_avro())
    with pytest.raises(MalformedRecordError, match="undecodable"):
        AvroDeserializer(schema)(good[:-3])
    with pytest.raises(MalformedRecordError, match="trailing bytes"):
        AvroDeserializer(schema)(good + b"\x00")


def test_encode_errors_name_the_schema() -> None:
    with pytest.raises(ValueError, match="io.agentstream.Reward"):
        encode_body(Reward.avro_schema(), {"reward_id": "r"})


def test_confluent_wire_format_interoperates_with_confluents_own_serdes() -> None:
    """Our registry framing is read by Confluent's AvroDeserializer, and vice versa."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer as ConfluentDeserializer
    from confluent_kafka.schema_registry.avro import AvroSerializer as ConfluentSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    registry = SchemaRegistryClient.new_client({"url": "mock://agentstream-test"})
    schema = Reward.avro_schema()
    ctx = SerializationContext("agentstream.rewards", MessageField.VALUE)
    reward = Reward(reward_id="rw-9", rollout_id="ro-9", value=0.25, feedback="late", timestamp=T0)

    ours = AvroSerializer(schema, registry)(reward.to_avro(), ctx)
    assert ours[0] == 0 and read_framing(ours).encoding == "confluent"
    theirs = ConfluentDeserializer(registry)(ours, ctx)
    assert Reward.from_avro(theirs) == reward

    confluent_bytes = ConfluentSerializer(registry, schema.json)(reward.to_avro(), ctx)
    assert Reward.from_avro(AvroDeserializer(schema, registry=registry)(confluent_bytes, ctx)) == reward


def test_confluent_framing_without_a_registry_is_a_clear_error() -> None:
    with pytest.raises(UnknownSchemaError, match="no schema registry"):
        AvroDeserializer(Reward.avro_schema())(b"\x00\x00\x00\x00\x07abc")


def test_reward_value_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        Reward(reward_id="r", rollout_id="ro", value=float("nan"), timestamp=T0)


def test_decode_body_is_exact_on_container_files_too() -> None:
    # The sink's fallback path decodes bodies written by other tools; fastavro's container output
    # must agree with our body encoding.
    schema = Reward.avro_schema()
    record = Reward(reward_id="r", rollout_id="ro", value=2.0, timestamp=T0).to_avro()
    buf = io.BytesIO()
    fastavro.writer(buf, schema.parsed, [record])
    body = encode_body(schema, record)
    assert body in buf.getvalue()
    assert decode_body(schema, body)["value"] == 2.0
    assert json.loads(schema.json)["name"] == "Reward"


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    prompt=st.lists(st.integers(min_value=-(2**31), max_value=2**31 - 1), max_size=300),
    response=st.lists(st.integers(min_value=0, max_value=300_000), max_size=100),
)
def test_token_arrays_encode_exactly_like_fastavro(prompt: list[int], response: list[int]) -> None:
    """The serializer appends memoised varints for trailing int arrays: same bytes as fastavro."""
    datum = _span(prompt_token_ids=prompt, response_token_ids=response).to_avro()
    schema = Span.avro_schema()
    assert AvroSerializer(schema)(datum)[10:] == encode_body(schema, datum)


def test_token_ids_out_of_range_or_of_the_wrong_type_are_refused() -> None:
    schema = Span.avro_schema()
    datum = _span().to_avro()
    with pytest.raises(ValueError, match="is not a int"):
        AvroSerializer(schema)({**datum, "prompt_token_ids": [2**31]})
    with pytest.raises(ValueError, match="is not a int"):
        AvroSerializer(schema)({**datum, "response_token_ids": ["7"]})
    # a missing field takes its default, as fastavro does for the rest of the record
    without = {k: v for k, v in datum.items() if k != "prompt_token_ids"}
    assert AvroSerializer(schema)(without)[10:] == encode_body(schema, without)


def test_lifecycle_contracts_roundtrip() -> None:
    from agentstream.schemas import (
        AttemptState,
        RolloutConfig,
        RolloutEvent,
        RolloutState,
        Task,
        VersionMetrics,
    )

    config = RolloutConfig(max_attempts=3, timeout_seconds=30, credit_assignment="discounted", discount=0.9)
    samples = [
        RolloutEvent(
            event_id="ev-1", rollout_id="ro-1", type="task_enqueued", timestamp=T0, task='{"q": 1}',
            task_type="support", mode="train", config=config,
        ),
        RolloutEvent(event_id="ev-2", rollout_id="ro-1", type="attempt_finished", status="failed", timestamp=T0, started_at=T0 - 5),
        Task(rollout_id="ro-1", attempt_number=2, input='{"q": 1}', config=config, enqueued_at=T0, resources={"prompt": "3"}),
        RolloutState(
            rollout_id="ro-1", status="requeuing", version=4, config=config, created_at=T0, updated_at=T0 + 9,
            attempts=[AttemptState(attempt_number=1, status="timeout", started_at=T0, error="too slow")],
            seen_event_ids=["ev-1", "ev-2"],
        ),
        VersionMetrics(
            resource_name="prompt", resource_version="3", window_start=T0, window_end=T0 + 60_000_000, rollouts=10,
            succeeded=7, failed=3, rewards=10, reward_sum=7.5, reward_sum_squares=6.25, latency_ms_sum=900.0,
            latency_ms_max=300.0, emitted_at=T0,
        ),
    ]  # fmt: skip
    for sample in samples:
        schema = type(sample).avro_schema()
        decoded = type(sample).from_avro(AvroDeserializer(schema)(AvroSerializer(schema)(sample.to_avro())))
        assert decoded == sample, type(sample).__name__


def test_old_rollout_events_read_with_the_new_schema() -> None:
    """Issue 2's RolloutEvent (no config, fewer types) still decodes: the new fields default."""
    old = AvroSchema.from_definition(
        {
            "type": "record", "name": "RolloutEvent", "namespace": "io.agentstream",
            "fields": [
                {"name": "event_id", "type": "string"}, {"name": "rollout_id", "type": "string"},
                {"name": "type", "type": {"type": "enum", "name": "RolloutEventType",
                 "symbols": ["task_enqueued", "attempt_started", "heartbeat", "attempt_finished", "unknown"],
                 "default": "unknown"}},
                {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            ],
        }
    )  # fmt: skip
    data = AvroSerializer(old)({"event_id": "e", "rollout_id": "r", "type": "heartbeat", "timestamp": T0})
    from agentstream.schemas import RolloutEvent

    event = RolloutEvent.from_avro(AvroDeserializer(RolloutEvent.avro_schema(), SchemaStore([old]))(data))
    assert event.type == "heartbeat" and event.config is None and event.task_type == ""
