"""The OTLP receiver against the real broker: OTLP/HTTP (protobuf, JSON, gzip), OTLP/gRPC, partial
success, the bearer token and back-pressure; records read back from the topics."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import LogsServiceStub
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from agentstream.process.ports import free_port
from agentstream.producers.otlp.ingest import OtlpIngest
from agentstream.producers.otlp.receiver import receiver_token
from agentstream.producers.otlp.service import OtlpService, OtlpState
from agentstream.settings import Settings
from agentstream.topics.catalogue import HEADER_DLQ_REASON, HEADER_EVENT_ID
from tests.helpers import read_topic, wait_for

pytestmark = pytest.mark.integration

TRACE = "5b8efff798038103d269b633813fc60c"
T0 = 1_700_000_000_000_000_000  # ns


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def llm_span(index: int, *, trace: str = TRACE, end_offset: int = 2_000_000) -> Span:
    """An LLM call in the current OTel GenAI conventions."""
    messages = [{"role": "user", "parts": [{"type": "text", "content": f"question {index}"}]}]
    output = [{"role": "assistant", "parts": [{"type": "text", "content": f"answer {index}"}]}]
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gemma",
        "gen_ai.response.id": f"resp-{index}",
        "gen_ai.input.messages": json.dumps(messages),
        "gen_ai.output.messages": json.dumps(output),
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 7,
        "agentstream.rollout.id": "ro-otlp",
    }
    return Span(
        trace_id=bytes.fromhex(trace),
        span_id=(index + 1).to_bytes(8, "big"),
        name="chat gemma",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=T0 + index * 10_000_000,
        end_time_unix_nano=T0 + index * 10_000_000 + end_offset,
        attributes=[_kv(k, v) for k, v in attributes.items()],
    )


def reward_span(index: int) -> Span:
    """An Agent Lightning reward annotation."""
    attributes = {
        "agentlightning.reward.0.name": "correct",
        "agentlightning.reward.0.value": 1.0,
        "agentstream.rollout.id": "ro-otlp",
    }
    return Span(
        trace_id=bytes.fromhex(TRACE),
        span_id=(1000 + index).to_bytes(8, "big"),
        name="agentlightning.annotation",
        start_time_unix_nano=T0 + 900_000_000,
        end_time_unix_nano=T0 + 900_000_000,
        attributes=[_kv(k, v) for k, v in attributes.items()],
    )


def trace_request(*spans: Span) -> ExportTraceServiceRequest:
    resource = Resource(attributes=[_kv("service.name", "otlp-test")])
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=list(spans))])]
    )


def log_request(*records: LogRecord) -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=list(records))])]
    )


def evaluation(score: float | None, index: int = 1) -> LogRecord:
    attributes = {"gen_ai.evaluation.name": "helpfulness", "agentstream.rollout.id": "ro-otlp"}
    if score is not None:
        attributes["gen_ai.evaluation.score.value"] = score  # type: ignore[assignment]
    return LogRecord(
        time_unix_nano=T0 + index,
        event_name="gen_ai.evaluation.result",
        trace_id=bytes.fromhex(TRACE),
        span_id=(index + 1).to_bytes(8, "big"),
        attributes=[_kv(k, v) for k, v in attributes.items()],
    )


@pytest.fixture
def otlp_settings(settings: Settings) -> Settings:
    otlp = {"http_port": 0, "grpc_port": 0, "collector_topics": []}
    return settings.model_copy(update={"otlp": settings.otlp.model_copy(update=otlp)})


@pytest.fixture
def service(otlp_settings: Settings) -> Iterator[OtlpService]:
    with OtlpService(otlp_settings) as running:
        yield running


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _headers(settings: Settings, content_type: str, **more: str) -> dict[str, str]:
    token = receiver_token(settings)
    return {"Content-Type": content_type, "Authorization": f"Bearer {token}", **more}


def _spans(settings: Settings, expected: int) -> list[dict[str, Any]]:
    return read_topic(settings, settings.topic("spans"), expected=expected)


def test_http_protobuf_round_trip_keeps_ids_and_times(otlp_settings: Settings, service: OtlpService) -> None:
    body = trace_request(llm_span(0), llm_span(1), reward_span(0)).SerializeToString()
    response = httpx.post(
        f"{service.http_url}/v1/traces",
        content=body,
        headers=_headers(otlp_settings, "application/x-protobuf"),
    )
    assert response.status_code == 200, response.content
    assert response.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert not answer.HasField("partial_success")
    # answered after the ack: the records are on the topics now
    assert (service.ingest.acked_spans, service.ingest.acked_rewards) == (3, 1)
    spans = {s["span_id"]: s for s in _spans(otlp_settings, 3)}
    assert set(spans) == {"0000000000000001", "0000000000000002", f"{1000:016x}"}
    first = spans["0000000000000001"]
    assert first["trace_id"] == TRACE
    assert first["rollout_id"] == "ro-otlp"
    assert _us(first["start_time"]) == T0 // 1000 and _us(first["end_time"]) == (T0 + 2_000_000) // 1000
    assert first["kind"] == "llm"
    rewards = read_topic(otlp_settings, otlp_settings.topic("rewards"), expected=1)
    assert [(r["name"], r["value"], r["rollout_id"]) for r in rewards] == [("correct", 1.0, "ro-otlp")]
    raw = read_topic(otlp_settings, otlp_settings.topic("spans"), expected=3, decode=False)
    assert {dict(m.headers())[HEADER_EVENT_ID].decode() for m in raw} == set(spans)


def test_http_json_gzip_round_trip(otlp_settings: Settings, service: OtlpService) -> None:
    request = json_format.MessageToDict(trace_request(llm_span(4)))
    # OTLP/JSON carries ids as hex, not protobuf JSON's base64
    for resource in request["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                span["traceId"], span["spanId"] = TRACE, f"{5:016x}"
    body = gzip.compress(json.dumps(request).encode())
    headers = _headers(otlp_settings, "application/json", **{"Content-Encoding": "gzip"})
    response = httpx.post(f"{service.http_url}/v1/traces", content=body, headers=headers)
    assert response.status_code == 200, response.content
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    [span] = _spans(otlp_settings, 1)
    assert (span["trace_id"], span["span_id"]) == (TRACE, f"{5:016x}")
    assert _us(span["start_time"]) == (T0 + 40_000_000) // 1000


def test_partial_success_dead_letters_the_rejected(otlp_settings: Settings, service: OtlpService) -> None:
    bad = llm_span(7, end_offset=10**19 - T0)  # ends in the 23rd century: invalid
    body = trace_request(llm_span(6), bad).SerializeToString()
    response = httpx.post(
        f"{service.http_url}/v1/traces",
        content=body,
        headers=_headers(otlp_settings, "application/x-protobuf"),
    )
    assert response.status_code == 200
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 1
    assert "chat gemma" in answer.partial_success.error_message
    assert [s["span_id"] for s in _spans(otlp_settings, 1)] == [f"{7:016x}"]
    [letter] = read_topic(otlp_settings, otlp_settings.topic("dead-letter"), expected=1, decode=False)
    assert json.loads(letter.value())["ident"] == f"{8:016x}"
    assert dict(letter.headers())[HEADER_DLQ_REASON]

    # logs: an evaluation without a score is rejected, one with a score becomes a reward (JSON answer)
    logs = json_format.MessageToDict(log_request(evaluation(0.5), evaluation(None, 2)))
    for resource in logs["resourceLogs"]:
        for scope in resource["scopeLogs"]:
            for record in scope["logRecords"]:
                record["traceId"] = TRACE
                record.pop("spanId")
    response = httpx.post(
        f"{service.http_url}/v1/logs",
        content=json.dumps(logs),
        headers=_headers(otlp_settings, "application/json"),
    )
    assert response.status_code == 200, response.content
    assert response.json()["partialSuccess"]["rejectedLogRecords"] == "1"
    rewards = read_topic(otlp_settings, otlp_settings.topic("rewards"), expected=1)
    assert [(r["name"], r["value"]) for r in rewards] == [("helpfulness", 0.5)]


def test_bad_requests_and_the_token(otlp_settings: Settings, service: OtlpService) -> None:
    url = f"{service.http_url}/v1/traces"
    body = trace_request(llm_span(0)).SerializeToString()
    for headers in (
        {"Content-Type": "application/x-protobuf"},
        {"Content-Type": "application/x-protobuf", "Authorization": "Bearer wrong"},
    ):
        response = httpx.post(url, content=body, headers=headers)
        assert response.status_code == 401
        assert status_pb2.Status.FromString(response.content).message
    response = httpx.post(
        url, content=b"\xff\x01garbage", headers=_headers(otlp_settings, "application/x-protobuf")
    )
    assert response.status_code == 400
    assert "undecodable" in status_pb2.Status.FromString(response.content).message
    response = httpx.post(url, content=b"{not json", headers=_headers(otlp_settings, "application/json"))
    assert response.status_code == 400 and response.json()["message"]
    token_file = otlp_settings.data_dir / "secrets" / "otlp.token"
    assert token_file.stat().st_mode & 0o077 == 0
    # nothing reached the topic
    assert read_topic(otlp_settings, otlp_settings.topic("spans"), timeout=1.0) == []


def test_busy_ingest_answers_429_and_an_unacknowledged_batch_503(otlp_settings: Settings) -> None:
    # Kafka that never answers: records stay in flight until their delivery timeout (3 s here)
    dead = otlp_settings.model_copy(
        update={
            "bootstrap_servers": f"127.0.0.1:{free_port()}",
            "otlp": otlp_settings.otlp.model_copy(update={"max_in_flight": 1}),
        }
    )
    with OtlpService(dead) as service, ThreadPoolExecutor(1) as pool:
        url = f"{service.http_url}/v1/traces"
        headers = _headers(dead, "application/x-protobuf")
        body = trace_request(llm_span(0)).SerializeToString()
        first = pool.submit(httpx.post, url, content=body, headers=headers, timeout=30)
        assert wait_for(lambda: service.ingest.in_flight == 1, timeout=10)
        response = httpx.post(url, content=body, headers=headers)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert "max_in_flight" in status_pb2.Status.FromString(response.content).message
        channel = grpc.insecure_channel(service.grpc_address)
        try:
            with pytest.raises(grpc.RpcError) as raised:
                TraceServiceStub(channel).Export(
                    trace_request(llm_span(3)), metadata=[("authorization", f"Bearer {receiver_token(dead)}")]
                )
        finally:
            channel.close()
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = dict(raised.value.trailing_metadata())["grpc-status-details-bin"]
        [detail] = status_pb2.Status.FromString(details).details
        info = error_details_pb2.RetryInfo()
        assert detail.Unpack(info) and info.retry_delay.seconds == 1
        # the first request is answered once Kafka gave up on its records: retry later, not 200
        answer = first.result(30)
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert service.ingest.in_flight == 0


def _neutral(request: ExportTraceServiceRequest) -> list[Any]:
    from agentstream.producers.otlp.decode import spans_from_proto

    return spans_from_proto(request)


def test_grpc_traces_and_logs(otlp_settings: Settings, service: OtlpService) -> None:
    channel = grpc.insecure_channel(service.grpc_address)
    metadata = [("authorization", f"Bearer {receiver_token(otlp_settings)}")]
    try:
        with pytest.raises(grpc.RpcError) as raised:
            TraceServiceStub(channel).Export(trace_request(llm_span(0)))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = TraceServiceStub(channel).Export(trace_request(llm_span(0), llm_span(1)), metadata=metadata)
        assert isinstance(answer, ExportTraceServiceResponse) and not answer.HasField("partial_success")
        logs = LogsServiceStub(channel).Export(
            log_request(evaluation(0.25), evaluation(None, 3)), metadata=metadata
        )
        assert isinstance(logs, ExportLogsServiceResponse)
        assert logs.partial_success.rejected_log_records == 1
    finally:
        channel.close()
    spans = _spans(otlp_settings, 2)
    assert sorted(s["span_id"] for s in spans) == ["0000000000000001", "0000000000000002"]
    rewards = read_topic(otlp_settings, otlp_settings.topic("rewards"), expected=1)
    assert [r["value"] for r in rewards] == [0.25]
    state = OtlpState.load(otlp_settings.data_dir)
    assert state is not None and state.grpc_address == service.grpc_address


def test_ingest_resolves_after_the_ack(otlp_settings: Settings) -> None:
    with OtlpIngest(otlp_settings) as ingest:
        result = ingest.publish_spans(_neutral(trace_request(llm_span(0), reward_span(1)))).result(10)
        assert (result.accepted_spans, result.accepted_rewards, result.rejected) == (2, 1, [])
        assert ingest.in_flight == 0
        assert ingest.acked_spans == 2


def test_the_stack_runs_the_receiver_as_a_member(otlp_settings: Settings) -> None:
    from agentstream.deploy.stack import Stack

    with Stack(otlp_settings, sink=False, workers=0, promoter=False, dashboard=False) as stack:
        assert wait_for(stack.otlp_summary, timeout=60), stack.members()
        [member] = [m for m in stack.members() if m.name == "otlp"]
        state = OtlpState.load(otlp_settings.data_dir)
        assert state is not None and state.pid == member.pid
        response = httpx.post(
            f"{state.http_url}/v1/traces",
            content=trace_request(llm_span(9)).SerializeToString(),
            headers=_headers(otlp_settings, "application/x-protobuf"),
        )
        assert response.status_code == 200, response.content
        assert [s["span_id"] for s in _spans(otlp_settings, 1)] == [f"{10:016x}"]
        assert wait_for(lambda: member.detail.startswith("HTTP http://127.0.0.1:"), timeout=5)
    assert OtlpState.load(otlp_settings.data_dir) is None
