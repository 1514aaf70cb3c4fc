"""The receiver with its worker pool against the real broker: a worker that dies costs the requests
it held a 503 with Retry-After (never a silent drop), and the next request is served."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
from google.rpc import status_pb2

from agentstream.producers.otlp.service import OtlpService
from agentstream.settings import Settings
from tests.integration.test_otlp_receiver import _headers, _spans, llm_span, trace_request

pytestmark = pytest.mark.integration


def test_a_dead_worker_gives_503_then_the_receiver_recovers(settings: Settings) -> None:
    otlp = {"http_port": 0, "grpc_port": 0, "collector_topics": [], "workers": 1}
    configured = settings.model_copy(update={"otlp": settings.otlp.model_copy(update=otlp)})
    headers = _headers(configured, "application/x-protobuf")
    body = trace_request(llm_span(0)).SerializeToString()
    with OtlpService(configured) as service:
        url = f"{service.http_url}/v1/traces"
        for restarts in (1, 2):
            executor = service.pool._executor
            assert executor is not None
            (worker,) = list(executor._processes)
            os.kill(worker, signal.SIGKILL)  # a worker crash (segfault, OOM kill)
            # the request that meets the dead worker: 503 + Retry-After, a google.rpc.Status body
            answer = httpx.post(url, content=body, headers=headers, timeout=60)
            assert answer.status_code == 503, answer.content
            assert answer.headers["retry-after"] == "1"
            assert "worker" in status_pb2.Status.FromString(answer.content).message
            # the broken pool was replaced: the exporter's retry is served
            answer = httpx.post(url, content=body, headers=headers, timeout=60)
            assert answer.status_code == 200, answer.content
            assert service.pool.restarts == restarts
    assert [s["span_id"] for s in _spans(configured, 2)] == ["0000000000000001"] * 2
