"""The shared process pieces: pid-stamped status files and the background HTTP server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agentstream.process.http import BackgroundServer, http_url
from agentstream.process.ports import listening_socket
from agentstream.process.status import (
    PidStatus,
    StackState,
    read_status,
    replace_file,
    status_path,
    write_status,
)


class _Advert(PidStatus):
    url: str


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_status_is_read_back_while_its_process_lives(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "advert.json"
    advert = _Advert(pid=os.getpid(), url="http://127.0.0.1:1")
    assert advert.write_to(path) == path
    assert _Advert.read_from(path) == advert
    assert [p.name for p in path.parent.iterdir()] == ["advert.json"]  # no scratch file left behind


def test_a_missing_garbled_or_orphaned_status_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "advert.json"
    assert _Advert.read_from(path) is None
    path.write_text("{not json")
    assert _Advert.read_from(path) is None
    path.write_text('{"pid": 1234}')  # a field missing
    assert _Advert.read_from(path) is None
    _Advert(pid=_dead_pid(), url="x").write_to(path)
    assert _Advert.read_from(path) is None
    _Advert(pid=0, url="x").write_to(path)  # 0 would address our own process group
    assert _Advert.read_from(path) is None


def test_withdrawing_leaves_a_newer_status_in_place(tmp_path: Path) -> None:
    path = tmp_path / "advert.json"
    older = _Advert(pid=os.getpid(), url="http://127.0.0.1:1")
    newer = _Advert(pid=os.getpid(), url="http://127.0.0.1:2")
    older.write_to(path)
    newer.write_to(path)
    older.withdraw_from(path)
    assert _Advert.read_from(path) == newer
    newer.withdraw_from(path)
    assert not path.exists()


def test_replace_file_swaps_the_whole_content(tmp_path: Path) -> None:
    path = tmp_path / "file"
    replace_file(path, "first, longer content")
    replace_file(path, b"second")
    assert path.read_bytes() == b"second"


def test_stack_state_lives_in_the_data_dir(tmp_path: Path) -> None:
    assert StackState.load(tmp_path) is None
    state = StackState(pid=os.getpid(), bootstrap_servers="127.0.0.1:9092", started_at=1.5)
    state.save(tmp_path)
    assert (tmp_path / "stack.json").exists()
    assert StackState.load(tmp_path) == state


def test_worker_status_round_trips_as_a_dict(tmp_path: Path) -> None:
    status = {"pid": os.getpid(), "ready": True, "assigned_partitions": [0, 3], "uptime_s": 1.5}
    assert write_status(tmp_path, status) == status_path(tmp_path, os.getpid())
    assert read_status(tmp_path, os.getpid()) == status
    assert read_status(tmp_path, _dead_pid()) is None
    dead = _dead_pid()
    write_status(tmp_path, {**status, "pid": dead})
    assert read_status(tmp_path, dead) is None  # a worker that died reports nothing


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:80"),
        ("", "http://127.0.0.1:80"),
        ("::", "http://[::1]:80"),
        ("::1", "http://[::1]:80"),
        ("localhost", "http://localhost:80"),
        ("10.0.0.2", "http://10.0.0.2:80"),
    ],
)
def test_http_url_names_a_reachable_address(host: str, url: str) -> None:
    assert http_url(host, 80) == url


def _hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def test_background_server_serves_until_stopped() -> None:
    app = Starlette(routes=[Route("/", _hello)])
    server = BackgroundServer(app, listening_socket("127.0.0.1", 0), name="test server", lifespan="off")
    url = http_url("127.0.0.1", server.port)
    server.start(timeout=30)
    try:
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == b"hello"
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_background_server_that_cannot_start_says_so() -> None:
    async def broken_app(scope: object, receive: object, send: object) -> None:
        raise RuntimeError("no lifespan for you")

    # lifespan "on": a failing startup stops uvicorn before it serves
    server = BackgroundServer(broken_app, listening_socket("127.0.0.1", 0), name="test server", lifespan="on")
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="the test server failed to start"):
        server.start(timeout=30)
    assert time.monotonic() - began < 15  # noticed when uvicorn gave up, not at the timeout
    assert server.socket.fileno() == -1  # closed
