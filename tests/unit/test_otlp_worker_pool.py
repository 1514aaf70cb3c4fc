"""The ingest's worker pool: same records as in-process, survives a dead worker, keeps no secrets."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from agentstream.producers.otlp.ingest import make_encoder
from agentstream.producers.otlp.pool import IngestPool, prepare, worker_settings
from agentstream.producers.otlp.receiver import JSON, PROTOBUF
from agentstream.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from otlp import _messages, build_request  # noqa: E402


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, kafka={"sasl.password": "s3cret"}, sdk={"redact": []})


@pytest.fixture
def pool(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[IngestPool]:
    monkeypatch.setenv("AGENTSTREAM_KAFKA__SASL__PASSWORD", "s3cret")
    with IngestPool(settings, make_encoder(settings), 1) as running:
        yield running


def test_workers_encode_the_same_records_as_the_caller(settings: Settings, pool: IngestPool) -> None:
    inputs, outputs = _messages()
    body = build_request(3, inputs, outputs, n=20)
    local = prepare(make_encoder(settings), "traces", body, PROTOBUF)
    remote = pool.submit("traces", body, PROTOBUF).result(timeout=120)
    assert local.encoded is not None and remote.encoded is not None
    assert remote.received == local.received == 20
    assert remote.encoded.records == local.encoded.records
    assert (remote.encoded.spans, remote.encoded.rewards) == (20, 0)
    bad = pool.submit("traces", b"{not json", JSON).result(timeout=60)
    assert bad.encoded is None and bad.error is not None and "undecodable" in bad.error


def test_a_dead_worker_fails_its_request_and_the_pool_recovers(pool: IngestPool) -> None:
    pool.warm_up()
    executor = pool._executor
    assert executor is not None
    with pytest.raises(BrokenProcessPool):
        executor.submit(os._exit, 3).result(timeout=60)  # a worker crash (segfault, OOM kill)
    # requests that meet the broken executor fail (503 for the exporter) and replace it
    with pytest.raises(BrokenProcessPool):
        pool.submit("traces", b"", PROTOBUF).result(timeout=60)
    assert pool.restarts == 1 and pool._executor is not executor
    assert pool.submit("traces", b"", PROTOBUF).result(timeout=120).received == 0


def test_workers_hold_no_settings_secrets(settings: Settings, pool: IngestPool) -> None:
    assert worker_settings(settings).kafka == {}
    pool.warm_up()
    executor = pool._executor
    assert executor is not None
    assert executor.submit(os.getenv, "AGENTSTREAM_KAFKA__SASL__PASSWORD").result(timeout=60) is None
    assert executor.submit(os.getenv, "PATH").result(timeout=60) == os.environ["PATH"]


def test_a_closed_pool_refuses_work(settings: Settings) -> None:
    pool = IngestPool(settings, make_encoder(settings), 1)
    pool.close()
    with pytest.raises(BrokenProcessPool):
        pool.submit("traces", b"", PROTOBUF)
    inline = IngestPool(settings, make_encoder(settings), 0)
    assert inline.submit("traces", b"", PROTOBUF).result().received == 0
