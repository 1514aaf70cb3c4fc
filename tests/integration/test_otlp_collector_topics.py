"""The OpenTelemetry Collector's Kafka exporter format (``otlp_proto`` / ``otlp_json`` records on its
own topics) consumed into spans and rewards; undecodable records dead-lettered, offsets committed."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from google.protobuf import json_format

from agentstream.producers.otlp.collector_topics import collector_group_id, content_type
from agentstream.producers.otlp.service import OtlpService
from agentstream.settings import Settings
from agentstream.topics.catalogue import HEADER_DLQ_REASON, HEADER_DLQ_SOURCE
from tests.helpers import read_topic, wait_for
from tests.integration.test_otlp_receiver import TRACE, evaluation, llm_span, log_request, trace_request

pytestmark = pytest.mark.integration


def _hex_ids(request: dict[str, object], resources: str, scopes: str, items: str) -> dict[str, object]:
    """OTLP/JSON ids are hex (protobuf JSON's are base64)."""
    for resource in request[resources]:  # type: ignore[attr-defined]
        for scope in resource[scopes]:
            for item in scope[items]:
                item["traceId"] = TRACE
                if "spanId" in item:
                    item["spanId"] = base64.b64decode(item["spanId"]).hex()
    return request


@pytest.mark.parametrize("encoding", ["auto", "otlp_proto", "otlp_json"])
def test_collector_topics_into_spans_rewards_and_dead_letters(settings: Settings, encoding: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    spans_topic, logs_topic = f"otlp_spans_{suffix}", f"otlp_logs_{suffix}"
    admin = AdminClient(settings.admin_config())
    for future in admin.create_topics([NewTopic(t, 2, 1) for t in (spans_topic, logs_topic)]).values():
        future.result(10)
    proto = trace_request(llm_span(0), llm_span(1)).SerializeToString()
    as_json = json.dumps(
        _hex_ids(
            json_format.MessageToDict(trace_request(llm_span(2))), "resourceSpans", "scopeSpans", "spans"
        )
    ).encode()
    logs = json_format.MessageToDict(log_request(evaluation(0.75)))
    logs_json = json.dumps(_hex_ids(logs, "resourceLogs", "scopeLogs", "logRecords")).encode()
    producer = Producer(settings.producer_config())
    good = {"auto": [proto, as_json], "otlp_proto": [proto], "otlp_json": [as_json]}[encoding]
    bad = {
        "auto": [b"\x0a\xff\xff\xff", b"{broken"],
        "otlp_proto": [b"\x0a\xff\xff\xff"],
        "otlp_json": [proto],
    }
    for value in [*good, *bad[encoding]]:
        producer.produce(spans_topic, value, b"k")
    if encoding != "otlp_proto":
        producer.produce(logs_topic, logs_json)
    assert producer.flush(10) == 0
    config = {
        "http_port": 0,
        "grpc_port": 0,
        "collector_topics": [spans_topic, logs_topic],
        "collector_encoding": encoding,
    }
    configured = settings.model_copy(update={"otlp": settings.otlp.model_copy(update=config)})
    ids = {"auto": [1, 2, 3], "otlp_proto": [1, 2], "otlp_json": [3]}[encoding]
    expected_spans = len(ids)
    with OtlpService(configured) as service:
        spans = read_topic(configured, configured.topic("spans"), expected=expected_spans, timeout=30)
        letters = read_topic(
            configured, configured.topic("dead-letter"), expected=len(bad[encoding]), timeout=30, decode=False
        )
        consumer = Consumer(configured.consumer_config(collector_group_id(configured)))
        partitions = [TopicPartition(spans_topic, p) for p in (0, 1)]
        total = len(good) + len(bad[encoding])

        def committed() -> bool:
            offsets = consumer.committed(partitions, timeout=5)
            return sum(max(tp.offset, 0) for tp in offsets) == total

        assert wait_for(committed, timeout=20)
        consumer.close()
        assert service.collector.undecodable == len(bad[encoding])
    assert sorted(s["span_id"] for s in spans) == [f"{i:016x}" for i in ids]
    assert {s["trace_id"] for s in spans} == {TRACE}
    assert len(letters) == len(bad[encoding])
    for letter in letters:
        headers = dict(letter.headers())
        assert b"undecodable OTLP traces" in headers[HEADER_DLQ_REASON]
        assert headers[HEADER_DLQ_SOURCE].decode().startswith(f"{spans_topic}/")
    assert sorted(letter.value() for letter in letters) == sorted(bad[encoding])
    if encoding != "otlp_proto":
        rewards = read_topic(configured, configured.topic("rewards"), expected=1)
        assert [(r["name"], r["value"]) for r in rewards] == [("helpfulness", 0.75)]


def test_auto_encoding_detects_json_by_its_first_byte() -> None:
    assert content_type(b'  {"resourceSpans": []}', "auto") == "application/json"
    assert content_type(b"\x0a\x00", "auto") == "application/x-protobuf"
    assert content_type(b"{", "otlp_proto") == "application/x-protobuf"
