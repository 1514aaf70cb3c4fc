"""Response logprobs: the span and triplet contracts, and reading them from OpenAI-compatible responses."""

from __future__ import annotations

import copy

from openai.types import Completion
from openai.types.chat import ChatCompletion

from agentstream.producers.openai.responses import logprob_token_ids, logprob_values
from agentstream.producers.openai.streams import ChoiceAggregate
from agentstream.schemas import AvroDeserializer, AvroSchema, AvroSerializer, SchemaStore, Span, Triplet
from agentstream.schemas.serde import _Encoder

T0 = 1_700_000_000_000_000
# exactly representable in float32: the wire type
LOGPROBS = [-0.5, -1.25, -0.0078125]


def _span(**overrides: object) -> Span:
    fields: dict[str, object] = dict(
        trace_id="a" * 32,
        span_id="b" * 16,
        rollout_id="ro-1",
        name="text_completion tiny",
        kind="llm",
        start_time=T0,
        end_time=T0 + 10,
        prompt_token_ids=[1, 2],
        response_token_ids=[3, 4, 5],
        response_logprobs=LOGPROBS,
    )
    fields.update(overrides)
    return Span.model_validate(fields)


def test_span_and_triplet_carry_response_logprobs_over_the_wire() -> None:
    span = _span()
    data = AvroSerializer(Span.avro_schema())(span.to_avro())
    assert Span.from_avro(AvroDeserializer(Span.avro_schema())(data)) == span
    triplet = Triplet(
        triplet_id="tr-1",
        rollout_id="ro-1",
        span_id="s",
        prompt_messages="[]",
        response="[]",
        response_token_ids=[3, 4, 5],
        response_logprobs=LOGPROBS,
        created_at=T0,
        emitted_at=T0,
    )
    data = AvroSerializer(Triplet.avro_schema())(triplet.to_avro())
    assert Triplet.from_avro(AvroDeserializer(Triplet.avro_schema())(data)).response_logprobs == LOGPROBS


def test_records_of_the_schema_before_logprobs_still_read() -> None:
    for model in (Span, Triplet):
        definition = copy.deepcopy(model.avro_schema().definition)
        definition["fields"] = [f for f in definition["fields"] if f["name"] != "response_logprobs"]
        old = AvroSchema.from_definition(definition)
        datum = (
            _span(response_logprobs=[]).to_avro()
            if model is Span
            else Triplet(
                triplet_id="tr-1",
                rollout_id="ro-1",
                span_id="s",
                prompt_messages="[]",
                response="[]",
                created_at=T0,
                emitted_at=T0,
            ).to_avro()
        )
        data = AvroSerializer(old)({k: v for k, v in datum.items() if k != "response_logprobs"})
        decoded = AvroDeserializer(model.avro_schema(), SchemaStore([old]))(data)
        assert decoded["response_logprobs"] == []


def test_span_token_ids_stay_on_the_fast_encoding_path() -> None:
    # the memoised-varint tail only covers trailing int arrays: logprobs sit before the token ids
    encoder = _Encoder(Span.avro_schema())
    assert [name for name, _, _ in encoder.tail] == ["prompt_token_ids", "response_token_ids"]


def test_logprobs_of_chat_and_text_responses() -> None:
    chat = ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "ab"},
                    "logprobs": {
                        "content": [
                            {"token": "token_id:7", "logprob": -0.5, "bytes": [97], "top_logprobs": []},
                            {"token": "token_id:9", "logprob": -1.25, "bytes": [98], "top_logprobs": []},
                        ]
                    },
                }
            ],
        }
    )
    logprobs = chat.choices[0].logprobs
    assert logprob_values(logprobs) == [-0.5, -1.25]
    assert logprob_token_ids(logprobs) == [7, 9]  # vLLM's --return-tokens-as-token-ids

    text = Completion.model_validate(
        {
            "id": "t",
            "object": "text_completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "text": "ab",
                    "finish_reason": "stop",
                    "logprobs": {
                        "tokens": ["a", "b"],
                        "token_logprobs": [-0.5, -1.25],
                        "top_logprobs": [{}, {}],
                        "text_offset": [0, 1],
                    },
                }
            ],
        }
    )
    assert logprob_values(text.choices[0].logprobs) == [-0.5, -1.25]
    assert logprob_token_ids(text.choices[0].logprobs) is None  # token strings only

    echoed = text.choices[0].logprobs.model_copy(update={"token_logprobs": [None, -1.25]})
    assert logprob_values(echoed) is None  # a gap: nothing rather than misaligned values
    assert logprob_values(None) is None


def test_streamed_logprobs_add_up_and_a_gap_drops_them() -> None:
    def chunk(*values: float) -> Completion:
        return Completion.model_validate(
            {
                "id": "t",
                "object": "text_completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "text": "x",
                        "finish_reason": "length",
                        "logprobs": {"tokens": ["x"] * len(values), "token_logprobs": list(values)},
                    }
                ],
            }
        )

    whole = ChoiceAggregate()
    for c in (chunk(-0.5), chunk(-1.25, -0.0078125)):
        whole.add_logprobs(c.choices[0].logprobs)
    assert whole.recorded_logprobs() == LOGPROBS

    gap = ChoiceAggregate()
    gap.add_logprobs(chunk(-0.5).choices[0].logprobs)
    missing = (
        chunk(-1.0).choices[0].logprobs.model_copy(update={"token_logprobs": [None]})
    )  # a server left one out
    gap.add_logprobs(missing)
    gap.add_logprobs(chunk(-0.25).choices[0].logprobs)
    assert gap.recorded_logprobs() is None
    assert ChoiceAggregate().recorded_logprobs() is None
