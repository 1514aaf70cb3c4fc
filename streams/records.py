"""The record formats the hops share: codecs, decoders and encoders, and how their topics and
tables are declared.

* Source topics are declared as raw bytes (:func:`raw_topic`): each hop decodes a record itself, so
  that one it cannot decode goes to the dead-letter topic instead of stopping the partition.
* Tables are keyed by rollout id (or a metrics partial key) as UTF-8 (:func:`rollout_table`), with a
  codec per value type: rollout states in our Avro framing (so the ClickHouse sink reads the
  ``rollout-state`` changelog like any topic), join records and metric partials as JSON.
* :class:`Serdes` holds the Avro decoders of the source topics and encoders of the output topics,
  built once per worker. Decoders refuse records of another type and records that break the
  validation rules (:mod:`agentstream.schemas.validation`, the rules the sink's tables enforce);
  :meth:`Serdes.check_state` and :meth:`Serdes.check_join` refuse table values the changelog could
  not take (invalid, or over the producer's record limit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from faust.serializers import codecs
from faust.types import AppT, TopicT

from agentstream.schemas import AvroRecord, AvroSchema, AvroSerializer, RolloutState, SchemaStore, load_schema
from agentstream.schemas.serde import AvroDeserializer, IncompatibleSchemaError, decode_body, read_framing
from agentstream.schemas.validation import InvalidRecordError, validate
from agentstream.settings import Settings
from agentstream.topics.catalogue import SCHEMAS
from agentstream.topics.dead_letter import record_limit
from agentstream.topics.schema_resolver import SchemaTopicResolver

from .join import RolloutJoin

#: codec names, registered with Faust by :func:`register_codecs`
UTF8 = "agentstream-utf8"
ROLLOUT_STATE = "agentstream-rollout-state"
JOIN = "agentstream-join"


class _Utf8(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return obj.encode() if isinstance(obj, str) else bytes(obj)

    def _loads(self, s: bytes) -> str:
        return s.decode()


class _AvroModel(codecs.Codec):
    """A pydantic event model in our Avro framing (so the sink reads table changelogs like any topic)."""

    def __init__(self, model: type[AvroRecord], settings: Settings) -> None:
        super().__init__(model=model)
        schema = load_schema(model.avro_stem)
        self._model = model
        self._encode = AvroSerializer(schema, settings.schema_registry_url)
        self._decode = AvroDeserializer(schema, registry=settings.schema_registry_url)

    def _dumps(self, obj: Any) -> bytes:
        return self._encode(obj.to_avro())

    def _loads(self, s: bytes) -> Any:
        return self._model.from_avro(self._decode(s))


class JoinRecord:
    """The joiner's table value: a rollout's join state and where its calls' spans are.

    ``encoded`` holds the changelog bytes once :meth:`Serdes.check_join` has measured them, so the
    state is encoded once per event; the joiner saves the record right after the check, before the
    join can change again.
    """

    __slots__ = ("encoded", "join", "locations")

    def __init__(self, join: RolloutJoin, locations: dict[str, list[int]] | None = None) -> None:
        self.join = join
        self.locations = locations if locations is not None else {}
        self.encoded: bytes | None = None


def _encode_join(record: JoinRecord) -> bytes:
    return orjson.dumps({"join": record.join.to_dict(), "at": record.locations})


class _JoinCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        encoded = obj.encoded
        obj.encoded = None  # used once: a later save of the same object encodes its state then
        return encoded if encoded is not None else _encode_join(obj)

    def _loads(self, s: bytes) -> JoinRecord:
        data = orjson.loads(s)
        return JoinRecord(RolloutJoin.from_dict(data["join"]), data["at"])


def register_codecs(settings: Settings) -> None:
    """Register the tables' codecs with Faust (a process-wide registry; the rollout-state codec
    depends on the schema registry of ``settings``)."""
    codecs.register(UTF8, _Utf8())
    codecs.register(ROLLOUT_STATE, _AvroModel(RolloutState, settings))
    codecs.register(JOIN, _JoinCodec())


def codec_type(codec: str) -> type:
    """A Faust type hint that names a registered codec; decoded values pass through unchanged.

    Faust derives a table's serializers from its key/value types; this is how a table gets ours.
    """

    class Passthrough:
        _options = type("Options", (), {"serializer": codec})

        @classmethod
        def from_data(cls, data: Any, preferred_type: Any = None) -> Any:
            return data

    Passthrough.__name__ = f"Codec[{codec}]"
    return Passthrough


Utf8Key = codec_type(UTF8)
RolloutStateValue = codec_type(ROLLOUT_STATE)
JoinRecordValue = codec_type(JOIN)
JsonValue = codec_type("json")


def raw_topic(app: AppT, *names: str) -> TopicT:
    """Source topic(s) whose records reach the agent as bytes (the hop decodes them)."""
    return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


def rollout_table(app: AppT, name: str, value_type: type, partitions: int, **kwargs: Any) -> Any:
    """A table keyed like the source topics (UTF-8 keys), partitioned like them, missing keys ``None``.

    Typed ``Any``: a Faust table is a mapping of its keys to the decoded values of ``value_type``.
    """
    return app.Table(
        name, default=None, key_type=Utf8Key, value_type=value_type, partitions=partitions, **kwargs
    )


def _strip_logical(schema: AvroSchema) -> AvroSchema:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "logicalType"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return AvroSchema.from_definition(strip(json.loads(schema.json)))


class MicrosDeserializer(AvroDeserializer):
    """Decodes like :class:`AvroDeserializer` but reads timestamps as plain microsecond ints: no
    datetimes, which cost time, and every comparison here is on integers."""

    def __init__(self, stem: str, store: SchemaStore, registry: Any = None) -> None:
        super().__init__(_strip_logical(load_schema(stem)), store, registry)
        self._stem = stem
        self._stripped: dict[bytes, AvroSchema] = {}

    def __call__(self, data: bytes | None, ctx: Any = None) -> dict[str, Any]:
        """The decoded record; raises :class:`MalformedRecordError` (or its subclasses
        :class:`IncompatibleSchemaError`, :class:`InvalidRecordError`) for one to dead-letter."""
        framing = read_framing(data)  # raises MalformedRecordError on a missing value
        assert data is not None and self.reader_schema is not None
        writer = self.writer_schema(framing)
        stripped = self._stripped.get(writer.fingerprint)
        if stripped is None:
            if writer.name != self.reader_schema.name:
                raise IncompatibleSchemaError(
                    f"a {writer.name} record where {self.reader_schema.name} was expected"
                )
            stripped = self._stripped[writer.fingerprint] = _strip_logical(writer)
        datum = decode_body(stripped, data, framing.header_len, self.reader_schema)
        validate(self._stem, datum)
        return datum


class StateTooLargeError(InvalidRecordError):
    """A table value whose changelog record would exceed the producer's record limit."""

    def __init__(self, table: str, size: int, limit: int) -> None:
        super().__init__(table, "state", f"would be {size} bytes, over the {limit}-byte record limit", size)


@dataclass(frozen=True)
class Serdes:
    """The Avro decoders of the source topics and encoders of the output topics of one worker."""

    decode_span: MicrosDeserializer
    decode_reward: MicrosDeserializer
    decode_event: MicrosDeserializer
    encode_task: AvroSerializer
    encode_event: AvroSerializer
    encode_triplet: AvroSerializer
    encode_metrics: AvroSerializer
    encode_state: AvroSerializer
    #: the largest changelog record the worker's producer can send
    record_limit: int

    def check_state(self, state: RolloutState) -> None:
        """Raise :class:`InvalidRecordError` unless ``state`` can be stored: valid (the sink's rules
        for ``rollout_state``) and small enough for its changelog record."""
        datum = state.to_avro()
        validate("rollout_state", datum)
        size = len(self.encode_state(datum))
        if size > self.record_limit:
            raise StateTooLargeError("rollouts", size, self.record_limit)

    def check_join(self, record: JoinRecord) -> None:
        """Raise :class:`StateTooLargeError` when ``record``'s changelog record would be too large."""
        record.encoded = _encode_join(record)
        size = len(record.encoded)
        if size > self.record_limit:
            raise StateTooLargeError("joins", size, self.record_limit)

    @classmethod
    def create(cls, settings: Settings) -> Serdes:
        """Serdes for ``settings``: writer schemas not shipped with us are looked up in the schemas
        topic (or the schema registry, when one is configured)."""
        resolver = SchemaTopicResolver(settings.consumer_config("unused"), settings.topic(SCHEMAS.name))
        store = SchemaStore.shipped(resolver)
        registry = settings.schema_registry_url

        def decoder(stem: str) -> MicrosDeserializer:
            return MicrosDeserializer(stem, store, registry)

        def encoder(stem: str) -> AvroSerializer:
            return AvroSerializer(load_schema(stem), registry)

        return cls(
            decode_span=decoder("span"),
            decode_reward=decoder("reward"),
            decode_event=decoder("rollout_event"),
            encode_task=encoder("task"),
            encode_event=encoder("rollout_event"),
            encode_triplet=encoder("triplet"),
            encode_metrics=encoder("version_metrics"),
            encode_state=encoder("rollout_state"),
            record_limit=record_limit(settings.producer_config()),
        )
