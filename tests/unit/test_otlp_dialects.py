"""The dialect normaliser on realistic spans of each instrumentation (fixtures in tests/data/otlp)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agentstream.producers.otlp.decode import OtlpEvent, OtlpLogRecord, OtlpSpan
from agentstream.producers.otlp.dialects import Normalised, normalise_logs, normalise_spans
from agentstream.producers.otlp.files import read_file
from agentstream.schemas import genai, load_schema
from agentstream.schemas.validation import validate

DATA = Path(__file__).parent.parent / "data" / "otlp"


def normalised(name: str) -> Normalised:
    out = Normalised()
    for batch in read_file(DATA / name):
        assert batch.error is None
        for part in (normalise_spans(batch.spans), normalise_logs(batch.logs)):
            out.spans += part.spans
            out.rewards += part.rewards
            out.rejected += part.rejected
    return out


def by_id(out: Normalised) -> dict[str, dict[str, Any]]:
    return {d["span_id"]: d for d in out.spans}


def messages(datum: dict[str, Any], key: str) -> list[dict[str, Any]]:
    parsed: list[dict[str, Any]] = json.loads(datum["attributes"][key])
    return parsed


ALL = sorted(p.name for p in DATA.iterdir())


@pytest.mark.parametrize("name", ALL)
def test_every_datum_is_valid_and_encodes(name: str) -> None:
    import fastavro

    span_schema = fastavro.parse_schema(load_schema("span").definition)
    reward_schema = fastavro.parse_schema(load_schema("reward").definition)
    out = normalised(name)
    for datum in out.spans:
        validate("span", datum)
        assert fastavro.validate(datum, span_schema, raise_errors=True)
        assert datum["sequence_id"] == 0
        assert datum["attributes"][genai.DIALECT]
    for datum in out.rewards:
        validate("reward", datum)
        assert fastavro.validate(datum, reward_schema, raise_errors=True)


def test_otel_genai_current_conventions() -> None:
    spans = by_id(normalised("otel_genai_current.json"))
    first, tool, second = spans["eee19b7ec3c1b175"], spans["eee19b7ec3c1b176"], spans["eee19b7ec3c1b177"]
    assert spans["eee19b7ec3c1b174"]["kind"] == "agent"
    assert first["kind"] == "llm" and second["kind"] == "llm"
    assert first["attributes"][genai.DIALECT] == "otel_genai"
    # no rollout id anywhere: the trace is the rollout
    assert first["rollout_id"] == "5b8efff798038103d269b633813fc60c" and first["attempt_id"] == ""
    # system instructions come first in the training prompt
    assert messages(first, genai.INPUT_MESSAGES) == [
        {
            "role": "system",
            "parts": [{"type": "text", "content": "You are a weather assistant. Use the tools."}],
        },
        {"role": "user", "parts": [{"type": "text", "content": "What's the weather in Paris?"}]},
    ]
    assert messages(first, genai.OUTPUT_MESSAGES)[0]["parts"][0]["type"] == "tool_call"
    assert first["int_attributes"][genai.USAGE_INPUT_TOKENS] == 58
    assert first["array_attributes"][genai.RESPONSE_FINISH_REASONS] == ["tool_calls"]
    assert first["start_time"] == 1_760_000_000_010_000 and first["end_time"] == 1_760_000_000_900_000
    # messages from the inference-details event (structured values)
    assert [m["role"] for m in messages(second, genai.INPUT_MESSAGES)] == ["user", "assistant", "tool"]
    assert messages(second, genai.OUTPUT_MESSAGES)[0]["parts"][0]["content"].startswith("It is 18")
    assert tool["kind"] == "tool"
    assert tool["attributes"][genai.TOOL_NAME] == "get_weather"
    assert json.loads(tool["attributes"][genai.TOOL_CALL_RESULT])["temperature_c"] == 18


def test_evaluation_event_on_a_call_targets_that_call() -> None:
    [reward] = normalised("otel_genai_current.json").rewards
    assert reward["name"] == "relevance" and reward["value"] == 0.9
    assert reward["span_id"] == "eee19b7ec3c1b177" and reward["response_id"] == "chatcmpl-CAx2"
    assert reward["feedback"] == "Answers the question."
    assert reward["timestamp"] == 1_760_000_002_300_000  # the end of the span it was found in
    assert reward["source"] == "judge"


def test_openllmetry_indexed_attributes() -> None:
    spans = by_id(normalised("openllmetry.jsonl"))
    call = spans["b7ad6b7169203332"]
    assert call["kind"] == "llm"
    prompt = messages(call, genai.INPUT_MESSAGES)
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "tool"]
    assert prompt[2]["parts"] == [
        {"type": "tool_call", "id": "call_jk1", "name": "get_joke", "arguments": {"topic": "otters"}}
    ]
    assert prompt[3]["parts"] == [
        {"type": "tool_call_response", "id": "call_jk1", "response": "Otters hold hands while sleeping."}
    ]
    [answer] = messages(call, genai.OUTPUT_MESSAGES)
    assert answer["finish_reason"] == "stop" and answer["parts"][0]["content"].startswith("Why did the otter")
    # old usage names and gen_ai.system -> the canonical ones; the old ones are kept too
    assert call["int_attributes"][genai.USAGE_INPUT_TOKENS] == 87
    assert call["int_attributes"][genai.USAGE_OUTPUT_TOKENS] == 33
    assert call["int_attributes"]["gen_ai.usage.prompt_tokens"] == 87
    assert call["attributes"][genai.PROVIDER_NAME] == "openai"
    assert call["attributes"][genai.RESPONSE_ID] == "chatcmpl-9zJoke1"
    # multimodal content sent as JSON parts
    image = messages(spans["b7ad6b7169203334"], genai.INPUT_MESSAGES)[0]["parts"]
    assert image[1] == {"type": "uri", "modality": "image", "uri": "https://example.com/otter.png"}
    assert spans["b7ad6b7169203331"]["kind"] == "agent"
    tool = spans["b7ad6b7169203333"]
    assert tool["kind"] == "tool" and tool["attributes"][genai.TOOL_NAME] == "get_joke"
    assert tool["attributes"][genai.OPERATION_NAME] == genai.OPERATION_EXECUTE_TOOL


def test_openinference() -> None:
    out = normalised("openinference.json")
    spans = by_id(out)
    call = spans["00f067aa0ba902b8"]
    assert call["kind"] == "llm" and call["attributes"][genai.DIALECT] == "openinference"
    assert (call["rollout_id"], call["attempt_id"]) == ("ro-oi-1", "at-oi-1")  # from the resource
    prompt = messages(call, genai.INPUT_MESSAGES)
    assert prompt[1]["parts"] == [
        {"type": "text", "content": "Summarise the attached figure"},
        {"type": "uri", "modality": "image", "uri": "https://example.com/fig1.png"},
    ]
    [answer] = messages(call, genai.OUTPUT_MESSAGES)
    assert answer["parts"] == [
        {"type": "tool_call", "id": "call_s1", "name": "search_papers", "arguments": {"query": "figure 1"}}
    ]
    assert call["attributes"][genai.REQUEST_MODEL] == "gpt-4o-mini-2024-07-18"
    assert call["int_attributes"][genai.USAGE_INPUT_TOKENS] == 812
    assert call["resource_version"] == "v3" and call["resource_name"].startswith("prompt_template:")
    assert spans["00f067aa0ba902b7"]["kind"] == "agent"
    tool = spans["00f067aa0ba902b9"]
    assert tool["kind"] == "tool" and tool["attributes"][genai.TOOL_CALL_ARGUMENTS] == '{"query":"figure 1"}'
    hidden = spans["00f067aa0ba902ba"]  # content capture off: stored, with the reason
    assert (
        hidden["kind"] == "other" and "without input messages" in hidden["attributes"][genai.NO_CALL_REASON]
    )
    assert spans["00f067aa0ba902bb"]["kind"] == "reward"
    [reward] = out.rewards
    assert (reward["name"], reward["value"], reward["feedback"]) == ("correctness", 0.8, "Mostly right.")


def test_agent_training_system_gives_calls_with_tokens_and_rewards() -> None:
    out = normalised("agent_training_legacy.jsonl")
    calls = [d for d in out.spans if d["kind"] == "llm"]
    assert len(calls) == 6
    for call in calls:
        assert call["rollout_id"].startswith("ro-legacy-") and call["attempt_id"] == "at-1"
        assert call["prompt_token_ids"][:3] == [151644, 8948, 198]
        assert len(call["response_token_ids"]) == 3
        assert messages(call, genai.INPUT_MESSAGES)[1]["role"] == "user"
    rewards = {r["rollout_id"]: r for r in out.rewards}
    assert {k: (r["name"], r["value"]) for k, r in rewards.items()} == {
        "ro-legacy-1": ("reward", 1.0),  # AGL's "primary" scalar is our default dimension
        "ro-legacy-2": ("reward", 0.5),  # the older `reward` attribute
        "ro-legacy-3": ("reward", 0.25),  # AgentOps task output {"type": "reward"}
    }
    for reward in out.rewards:
        assert reward["span_id"] is None and reward["response_id"] is None  # the strategy credits them
        assert reward["timestamp"] > max(
            c["end_time"] for c in calls if c["rollout_id"] == reward["rollout_id"]
        )
    reward_spans = [d for d in out.spans if d["kind"] == "reward"]
    assert len(reward_spans) == 3


def test_agl_dump_multi_dimensional_reward() -> None:
    out = normalised("agl_dump.json")
    assert [(r["name"], r["value"]) for r in out.rewards] == [("task_completion", 1.0), ("efficiency", 0.5)]
    assert out.rewards[0]["attributes"]["agentstream.reward.primary"] == "true"
    assert {r["reward_id"] for r in out.rewards} == {"6e0c63257de34c94:0", "6e0c63257de34c94:1"}
    call = by_id(out)["6e0c63257de34c93"]
    assert call["start_time"] == 1_760_000_000_123_456  # float seconds, kept to the microsecond
    assert (call["rollout_id"], call["attempt_id"]) == ("ro-agl-7", "at-agl-7-0")
    assert (call["prompt_token_ids"], call["response_token_ids"]) == ([1, 2, 3], [4, 5])


def test_unknown_dialect_is_stored_with_the_reason() -> None:
    spans = by_id(normalised("unknown_dialect.json"))
    plain, llm_like = spans["1234567890abcdef"], spans["1234567890abcdf0"]
    assert plain["attributes"][genai.DIALECT] == "unknown" and plain["kind"] == "other"
    assert plain["attributes"]["http.route"] == "/ask"  # unknown attributes kept verbatim
    assert genai.NO_CALL_REASON not in plain["attributes"]
    assert llm_like["kind"] == "other" and genai.NO_CALL_REASON in llm_like["attributes"]
    assert (llm_like["status"], llm_like["error"]) == ("error", "timeout")


def test_log_records() -> None:
    out = normalised("otel_genai_logs.jsonl")
    [reward] = out.rewards
    assert (reward["name"], reward["value"], reward["response_id"]) == ("helpfulness", 0.75, "chatcmpl-CAx2")
    assert reward["span_id"] is None and reward["parent_span_id"] == "eee19b7ec3c1b177"
    assert reward["rollout_id"] == "5b8efff798038103d269b633813fc60c"
    assert sorted(r.reason.split(":")[0] for r in out.rejected) == [
        "gen_ai.client.inference.operation.details",
        "gen_ai.user.message",
    ]
    assert all("OTEL_SEMCONV_STABILITY_OPT_IN" in r.reason and r.kind == "log" for r in out.rejected)
    # deterministic: the same record gives the same reward id
    assert normalised("otel_genai_logs.jsonl").rewards[0]["reward_id"] == reward["reward_id"]


def _span(**changes: Any) -> OtlpSpan:
    base = OtlpSpan(
        trace_id="ab" * 16,
        span_id="cd" * 8,
        parent_span_id=None,
        name="chat m",
        kind=3,
        start_ns=1_000_000_000,
        end_ns=2_000_000_000,
        status_code=0,
        status_message="",
        attributes={
            genai.OPERATION_NAME: "chat",
            genai.INPUT_MESSAGES: json.dumps([{"role": "user", "content": "hi"}]),  # the OpenAI shape
        },
        events=[],
        resource={},
    )
    return replace(base, **changes)


def test_openai_shaped_messages_are_converted_and_ids_come_from_span_attributes() -> None:
    span = _span(attributes={**_span().attributes, "agentstream.rollout.id": "r1", "rollout_id": "ignored"})
    [datum] = normalise_spans([span]).spans
    assert datum["rollout_id"] == "r1"
    assert json.loads(datum["attributes"][genai.INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]}
    ]
    assert json.loads(datum["attributes"][genai.OUTPUT_MESSAGES]) == []


def test_what_cannot_be_made_valid_is_rejected_not_raised() -> None:
    too_late = _span(end_ns=8_000_000_000_000_000_000_000)  # after 2200
    nan = _span(span_id="ef" * 8, attributes={"score": float("nan"), "x": {"nested": 1}})
    reward = _span(
        span_id="aa" * 8,
        name="agentlightning.annotation",
        attributes={"agentlightning.reward.0.name": "r", "agentlightning.reward.0.value": "not a number"},
        events=[OtlpEvent("gen_ai.evaluation.result", 5_000, {"gen_ai.evaluation.score.value": "x"})],
    )
    out = normalise_spans([too_late, nan, reward])
    [rejected] = out.rejected
    assert rejected.ident == "cd" * 8 and "end_time" in rejected.reason
    kept = by_id(out)
    assert kept["ef" * 8]["attributes"]["score"] == "nan"  # kept as text rather than lost
    assert kept["ef" * 8]["attributes"]["x"] == '{"nested":1}'
    assert out.rewards == []  # no numeric value: no reward, the span is kept
    logs = normalise_logs(
        [OtlpLogRecord(5, "", "", "gen_ai.evaluation.result", None, {"gen_ai.evaluation.name": "n"}, {})]
    )
    assert logs.rewards == [] and "numeric" in logs.rejected[0].reason


def test_agl_link_names_the_scored_response() -> None:
    span = _span(
        name="agentlightning.annotation",
        attributes={
            "agentlightning.reward.0.name": "primary",
            "agentlightning.reward.0.value": 0.5,
            "agentlightning.link.0.key_match": "gen_ai.response.id",
            "agentlightning.link.0.value_match": "response-123",
        },
    )
    out = normalise_spans([span])
    [reward] = out.rewards
    assert (reward["response_id"], reward["span_id"], reward["name"]) == ("response-123", None, "reward")
    assert out.spans[0]["kind"] == "reward"


def test_judge_mark_and_tool_kinds() -> None:
    judge = _span(attributes={**_span().attributes, "agentstream.judge": True})
    assert normalise_spans([judge]).spans[0]["bool_attributes"][genai.JUDGE] is True
    evaluator = _span(attributes={**_span().attributes, "gen_ai.evaluation.name": "relevance"})
    assert normalise_spans([evaluator]).spans[0]["bool_attributes"][genai.JUDGE] is True
    policy = _span(attributes={**_span().attributes, "agentstream.judge": False})
    assert normalise_spans([policy]).spans[0]["bool_attributes"][genai.JUDGE] is False
    tool = _span(
        attributes={
            genai.OPERATION_NAME: "execute_tool",
            "gen_ai.tool.name": "t",
            "gen_ai.request.model": "m",
        }
    )
    [datum] = normalise_spans([tool]).spans
    assert datum["kind"] == "tool" and genai.NO_CALL_REASON not in datum["attributes"]


def test_token_ids_as_json_strings_and_bad_token_lists() -> None:
    attributes = {
        **_span().attributes,
        "prompt_token_ids": "[1, 2]",
        "response_token_ids": ["3", "4"],
        "response_logprobs": "[-0.5, -0.25]",
    }
    [datum] = normalise_spans([_span(attributes=attributes)]).spans
    assert (datum["prompt_token_ids"], datum["response_token_ids"]) == ([1, 2], [3, 4])
    assert datum["response_logprobs"] == [-0.5, -0.25]
    bad = {**_span().attributes, "prompt_token_ids": [1, 2**40], "response_token_ids": "oops"}
    [datum] = normalise_spans([_span(attributes=bad)]).spans
    assert datum["prompt_token_ids"] == [] and datum["response_token_ids"] == []
