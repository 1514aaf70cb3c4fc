"""OTLP decode: protobuf and OTLP/JSON give the same neutral spans and log records."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agentstream.producers.otlp.decode import (
    OtlpDecodeError,
    logs_from_json,
    logs_from_proto,
    spans_from_json,
    spans_from_proto,
)

DATA = Path(__file__).parent.parent / "data" / "otlp"


def _hex_to_b64(message: dict) -> dict:  # type: ignore[type-arg]
    """OTLP/JSON ids are hex; protobuf's JSON mapping (json_format) wants base64 for bytes."""
    for key in ("traceId", "spanId", "parentSpanId"):
        if message.get(key):
            message[key] = base64.b64encode(bytes.fromhex(message[key])).decode()
    return message


def _proto_of(path: Path) -> ExportTraceServiceRequest:
    data = json.loads(path.read_text())
    for resource_spans in data["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                _hex_to_b64(span)
    return json_format.ParseDict(data, ExportTraceServiceRequest())


@pytest.mark.parametrize("name", ["otel_genai_current.json", "openinference.json", "unknown_dialect.json"])
def test_protobuf_and_json_decode_to_the_same_spans(name: str) -> None:
    path = DATA / name
    from_json = spans_from_json(path.read_bytes())
    from_proto = spans_from_proto(_proto_of(path))
    assert from_json == from_proto
    assert from_json  # the fixture has spans


def test_json_keeps_ids_times_values_and_structure() -> None:
    spans = spans_from_json((DATA / "otel_genai_current.json").read_bytes())
    chat = spans[3]
    assert chat.trace_id == "5b8efff798038103d269b633813fc60c"
    assert chat.span_id == "eee19b7ec3c1b177"
    assert chat.parent_span_id == "eee19b7ec3c1b174"
    assert spans[0].parent_span_id is None
    assert chat.kind == 3
    assert chat.start_ns == 1_760_000_000_000_000_000 + 1110 * 1_000_000  # int64 from a string, exactly
    assert chat.attributes["gen_ai.usage.input_tokens"] == 96
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert chat.resource["service.name"] == "weather-agent"
    assert chat.scope_name == "opentelemetry.instrumentation.openai_v2"
    details = chat.events[0]
    assert details.name == "gen_ai.client.inference.operation.details"
    # an array of kvlists arrives as a list of dicts
    assert details.attributes["gen_ai.input.messages"][0] == {
        "role": "user",
        "parts": [{"type": "text", "content": "What's the weather in Paris?"}],
    }


def test_any_value_kinds() -> None:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes(range(16)), bytes(range(8)), "s"
    span.status.code, span.status.message = 2, "boom"
    values = {
        "s": ("string_value", "x"),
        "i": ("int_value", -(2**62)),
        "d": ("double_value", 0.5),
        "b": ("bool_value", True),
        "y": ("bytes_value", b"\x01\xff"),
    }
    for key, (field, value) in values.items():
        kv = span.attributes.add()
        kv.key = key
        setattr(kv.value, field, value)
    kv = span.attributes.add()
    kv.key = "a"
    kv.value.array_value.values.add().int_value = 3
    kv.value.array_value.values.add().string_value = "t"
    kv = span.attributes.add()
    kv.key = "m"
    inner = kv.value.kvlist_value.values.add()
    inner.key, inner.value.double_value = "k", 1.5
    [decoded] = spans_from_proto(request)
    assert decoded.attributes == {
        "s": "x",
        "i": -(2**62),
        "d": 0.5,
        "b": True,
        "y": "01ff",
        "a": [3, "t"],
        "m": {"k": 1.5},
    }
    assert (decoded.status_code, decoded.status_message) == (2, "boom")
    assert decoded.trace_id == bytes(range(16)).hex()
    assert decoded.parent_span_id is None
    # and the same through OTLP/JSON (bytes are base64 there, ids hex)
    as_json = json_format.MessageToDict(request)
    span_json = as_json["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span_json["traceId"], span_json["spanId"] = bytes(range(16)).hex(), bytes(range(8)).hex()
    assert spans_from_json(as_json) == [decoded]


def test_json_accepts_enum_names_and_snake_case() -> None:
    request = {
        "resource_spans": [
            {
                "scope_spans": [
                    {
                        "spans": [
                            {
                                "trace_id": "AB" * 16,
                                "span_id": "cd" * 8,
                                "name": "x",
                                "kind": "SPAN_KIND_CLIENT",
                                "start_time_unix_nano": 5,
                                "status": {"code": "STATUS_CODE_ERROR"},
                            }
                        ]
                    }
                ]
            }
        ]
    }
    [span] = spans_from_json(json.dumps(request))
    assert (span.trace_id, span.kind, span.status_code, span.start_ns) == ("ab" * 16, 3, 2, 5)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "00000000000000aa"}]}]}]}',
            "traceId is missing",
        ),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "AAECAwQFBgcICQoLDA0ODw==", '
            b'"spanId": "00000000000000aa"}]}]}]}',
            "32 hex characters",
        ),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": "no"}]}]}', "spans must be a list"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [7]}]}]}', "malformed OTLP/JSON"),
    ],
)
def test_malformed_json_raises_a_decode_error_saying_what(payload: bytes, message: str) -> None:
    with pytest.raises(OtlpDecodeError, match=message):
        spans_from_json(payload)


def test_proto_with_short_ids_is_refused() -> None:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id = b"\x01" * 8, b"\x02" * 8
    with pytest.raises(OtlpDecodeError, match="16 bytes"):
        spans_from_proto(request)


def test_logs_from_json_and_proto() -> None:
    lines = (DATA / "otel_genai_logs.jsonl").read_text().splitlines()
    evaluation = logs_from_json(lines[0])
    [record] = evaluation
    assert record.event_name == "gen_ai.evaluation.result"
    assert record.trace_id == "5b8efff798038103d269b633813fc60c"
    assert record.span_id == "eee19b7ec3c1b177"
    assert record.attributes["gen_ai.evaluation.score.value"] == 0.75
    others = logs_from_json(lines[1])
    assert [r.event_name for r in others] == [
        "gen_ai.client.inference.operation.details",
        "gen_ai.user.message",
        "",
    ]
    assert others[1].body == {"content": "What's the weather in Paris?"}
    assert others[2].trace_id == "" and others[2].body == "agent started"

    request = ExportLogsServiceRequest()
    log = request.resource_logs.add().scope_logs.add().log_records.add()
    log.observed_time_unix_nano = 77  # no time_unix_nano: the observed time is used
    log.trace_id, log.span_id = bytes(range(16)), bytes(range(8))
    kv = log.attributes.add()
    kv.key, kv.value.string_value = "event.name", "gen_ai.evaluation.result"
    [decoded] = logs_from_proto(request)
    assert (decoded.time_ns, decoded.event_name, decoded.body) == (77, "gen_ai.evaluation.result", None)
    assert decoded.span_id == bytes(range(8)).hex()


def test_file_reader_detects_each_value_and_goes_on_after_a_bad_one(tmp_path: Path) -> None:
    from agentstream.producers.otlp.files import read_file

    agl = json.loads((DATA / "agl_dump.json").read_text())
    logs_line = (DATA / "otel_genai_logs.jsonl").read_text().splitlines()[0]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        "\n".join(
            [
                json.dumps(agl[0]),  # AGL spans as JSON lines are grouped into one batch
                json.dumps(agl[1]),
                "{broken",
                logs_line,
                json.dumps({"something": "else"}),
                "",
                json.dumps(json.loads((DATA / "unknown_dialect.json").read_text())),
            ]
        )
    )
    batches = list(read_file(mixed))
    assert [(b.line, len(b.spans), len(b.logs), b.error is not None) for b in batches] == [
        (1, 2, 0, False),
        (3, 0, 0, True),
        (4, 0, 1, False),
        (5, 0, 0, True),
        (7, 2, 0, False),
    ]
    assert "not valid JSON" in (batches[1].error or "")
    assert "neither an OTLP" in (batches[3].error or "")
    # a JSON list of OTLP requests, and an AGL span with a malformed id
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([json.loads((DATA / "openinference.json").read_text())] * 2))
    assert [len(b.spans) for b in read_file(requests)] == [5, 5]
    bad = tmp_path / "bad_agl.json"
    bad.write_text(json.dumps([agl[1], {**agl[2], "span_id": "xyz"}]))
    [batch] = read_file(bad)
    assert len(batch.spans) == 1 and "span_id must be 16 hex characters" in (batch.error or "")
