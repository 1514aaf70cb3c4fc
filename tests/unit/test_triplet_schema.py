"""The triplet's reward dimensions and retraction flag (issue 14): old records still decode, new ones
round-trip, and the validation rules (the sink's CHECK constraints) cover the dimensions."""

from __future__ import annotations

import copy
import math

import pytest

from agentstream.schemas import AvroDeserializer, AvroSchema, AvroSerializer, SchemaStore, Triplet
from agentstream.schemas.validation import InvalidRecordError, clickhouse_constraints, validate

T0 = 1_700_000_000_000_000


def triplet(**fields: object) -> Triplet:
    return Triplet(
        triplet_id="tr-1",
        rollout_id="ro-1",
        span_id="s1",
        prompt_messages="[]",
        response="[]",
        created_at=T0,
        emitted_at=T0,
        **fields,  # type: ignore[arg-type]
    )


def test_triplets_written_before_the_new_fields_decode_with_their_defaults() -> None:
    new = Triplet.avro_schema()
    definition = copy.deepcopy(new.definition)
    definition["fields"] = [
        f for f in definition["fields"] if f["name"] not in ("reward_dimensions", "retracted")
    ]
    old = AvroSchema.from_definition(definition)
    datum = {
        k: v for k, v in triplet(reward=0.5).to_avro().items() if k not in ("reward_dimensions", "retracted")
    }
    decoded = Triplet.from_avro(AvroDeserializer(new, SchemaStore([old, new]))(AvroSerializer(old)(datum)))
    assert decoded.reward == 0.5 and decoded.reward_dimensions == {} and decoded.retracted is False


def test_dimensions_and_retraction_round_trip() -> None:
    schema = Triplet.avro_schema()
    sample = triplet(reward=0.6, reward_dimensions={"correctness": 0.6, "format": 0.25}, retracted=True)
    assert Triplet.from_avro(AvroDeserializer(schema)(AvroSerializer(schema)(sample.to_avro()))) == sample


def test_a_non_finite_dimension_is_invalid_for_workers_and_the_sink() -> None:
    with pytest.raises(InvalidRecordError, match="reward_dimensions"):
        validate("triplet", triplet(reward_dimensions={"a": 1.0, "b": math.inf}).to_avro())
    validate("triplet", triplet(reward_dimensions={"a": 1.0}).to_avro())
    assert any("mapValues(reward_dimensions)" in c for c in clickhouse_constraints("triplet").values())


def test_trainers_never_learn_a_retracted_triplet() -> None:
    from agentstream.trainers.windows import TripletFilter

    lenient = TripletFilter(require_reward=False)
    assert lenient.accepts(triplet(mode="train")) and TripletFilter().accepts(
        triplet(mode="train", reward=1.0)
    )
    assert not TripletFilter().accepts(triplet(mode="train"))  # no reward yet
    assert not lenient.accepts(triplet(mode="train", retracted=True))
    assert not TripletFilter().accepts(triplet(mode="train", reward=1.0, retracted=True))
