"""Nobody gets into the dashboard who should not: it always needs its token (generated when none is
set), wrong tokens are rate-limited, sessions expire and logout revokes them, cross-site POSTs are
refused, and a stack hands its dashboard the token by file, never in the environment."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from agentstream.analytics.dashboard import COOKIE, DashboardState, create_app
from agentstream.analytics.dashboard_clickhouse import Unavailable
from agentstream.deploy.stack import Stack
from agentstream.settings import DashboardSettings, Settings
from tests.helpers import settings_env, wait_for

pytestmark = pytest.mark.integration

TOKEN = "the-configured-dashboard-token-0123456789"


def _no_clickhouse() -> Any:
    raise Unavailable("no ClickHouse in this test")  # a signed-in request answers 503, not 401


def _app(tmp_path: Path, **dashboard: Any) -> Any:
    settings = Settings(
        data_dir=tmp_path / "data", dashboard=DashboardSettings(token=SecretStr(TOKEN), **dashboard)
    )
    return create_app(settings, client_factory=_no_clickhouse)


def _sign_in(client: TestClient) -> str:
    response = client.post("/login", data={"token": TOKEN, "next": "/ab"})
    assert response.status_code == 303, response.text
    return response.cookies[COOKIE]


def test_beyond_loopback_without_a_token_one_is_generated_and_anonymous_requests_refused(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    process = subprocess.Popen(
        [sys.executable, "-m", "agentstream.cli", "dashboard", "--host", "0.0.0.0", "--port", "0"],
        env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    token_file = settings.data_dir / "secrets" / "dashboard.token"
    try:
        state = wait_for(lambda: DashboardState.load(settings.data_dir), 60)
        assert state is not None, process.poll()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        for path in ("/api/rollouts", "/api/ab", "/api/resources"):
            assert httpx.get(f"{state.url}{path}", timeout=30).status_code == 401, path
        page = httpx.get(f"{state.url}/rollouts", timeout=30)
        assert page.status_code == 401 and 'name="token"' in page.text  # the sign-in form, no data
        assert httpx.get(f"{state.url}/healthz", timeout=30).status_code == 200  # probes stay open
        signed = httpx.get(
            f"{state.url}/api/resources", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        assert signed.status_code not in (401, 403, 429), signed.text
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert str(token_file) in "".join(output.split())  # the log says where the token is (rich wraps) ...
    assert token not in output  # ... never the token


def test_wrong_tokens_are_rate_limited_per_client_and_overall(tmp_path: Path) -> None:
    app = _app(tmp_path, login_failures_per_client=3, login_failures_total=5)
    with (
        TestClient(app, follow_redirects=False, client=("10.0.0.1", 5000)) as first,
        TestClient(app, follow_redirects=False, client=("10.0.0.2", 5000)) as second,
        TestClient(app, follow_redirects=False, client=("10.0.0.3", 5000)) as third,
    ):
        assert first.post("/login", data={"token": "guess-1"}).status_code == 401
        assert first.get("/api/rollouts", headers={"Authorization": "Bearer guess-2"}).status_code == 401
        assert first.get("/rollouts?token=guess-3").status_code == 401  # every way of guessing counts
        for attempt in (
            first.post("/login", data={"token": TOKEN}),  # locked out: not even the right token
            first.get("/api/rollouts", headers={"Authorization": f"Bearer {TOKEN}"}),
        ):
            assert attempt.status_code == 429 and int(attempt.headers["retry-after"]) > 0
        assert second.post("/login", data={"token": TOKEN}).status_code == 303  # others are not
        assert second.post("/login", data={"token": "guess-4"}).status_code == 401
        assert second.post("/login", data={"token": "guess-5"}).status_code == 401  # 5 overall
        locked = third.get("/api/rollouts", headers={"Authorization": "Bearer guess-6"})
        assert locked.status_code == 429 and "retry-after" in locked.headers
        # a browser signed in before keeps its session: the limit is on guessing, not on use
        assert second.get("/api/rollouts").status_code == 503


def test_the_session_cookie_is_a_random_id_with_strict_attributes(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with TestClient(app, base_url="https://dashboard.example", follow_redirects=False) as client:
        response = client.post("/login", data={"token": TOKEN, "next": "/"})
        assert response.status_code == 303
        header = response.headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=strict" in header and "secure" in header
        assert TOKEN not in response.headers["set-cookie"]
        again = client.post("/login", data={"token": TOKEN, "next": "/"}).cookies[COOKIE]
        assert again != response.cookies[COOKIE]  # not a function of the token
    with TestClient(app, follow_redirects=False) as plain:
        assert "secure" not in plain.post("/login", data={"token": TOKEN}).headers["set-cookie"].lower()


def test_sessions_expire(tmp_path: Path) -> None:
    app = _app(tmp_path, session_max_seconds=2.0)
    with TestClient(app, follow_redirects=False) as client:
        cookie = _sign_in(client)
        assert client.get("/api/rollouts").status_code == 503  # signed in (ClickHouse is absent here)
    time.sleep(3.0)  # past session_max_seconds, used or not
    # sent anyway (a copied cookie; the browser's own expiry is no guard): the server has ended it
    with TestClient(app, follow_redirects=False, cookies={COOKIE: cookie}) as replayed:
        assert replayed.get("/api/rollouts").status_code == 401


def test_logout_revokes_the_session_server_side(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with TestClient(app, follow_redirects=False) as client:
        cookie = _sign_in(client)
        assert client.get("/api/rollouts").status_code == 503
        assert client.get("/logout").status_code == 303
    with TestClient(app, follow_redirects=False, cookies={COOKIE: cookie}) as replayed:
        assert replayed.get("/api/rollouts").status_code == 401  # the copied cookie no longer works
        assert replayed.get("/rollouts").status_code == 401


def test_cross_site_posts_are_refused(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with TestClient(app, follow_redirects=False) as client:
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Referer": "http://evil.example/page"},
        ):
            response = client.post("/login", data={"token": TOKEN}, headers=headers)
            assert response.status_code == 403 and COOKIE not in response.cookies, headers
        same = client.post("/login", data={"token": TOKEN}, headers={"Origin": "http://testserver"})
        assert same.status_code == 303
        proxied = client.post("/login", data={"token": TOKEN}, headers={"Origin": "https://testserver"})
        assert proxied.status_code == 303  # TLS ended by a proxy in front: same host, same site


def test_a_stack_hands_its_dashboard_the_token_by_file_not_by_environment(settings: Settings) -> None:
    settings = settings.model_copy(update={"dashboard": DashboardSettings(port=0, token=SecretStr(TOKEN))})
    with Stack(settings, sink=False, workers=0, promoter=False, otlp=False) as stack:
        url = wait_for(stack.dashboard_url, 60)
        assert url, (
            (stack.logs / "dashboard.log").read_text() if (stack.logs / "dashboard.log").exists() else ""
        )
        (dashboard,) = stack.children
        assert dashboard.status.pid is not None
        environ = Path(f"/proc/{dashboard.status.pid}/environ").read_bytes()
        assert TOKEN.encode() not in environ
        token_file = settings.data_dir / "secrets" / "dashboard.token"
        assert f"AGENTSTREAM_DASHBOARD__TOKEN_FILE={token_file}".encode() in environ.split(b"\0")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        # the dashboard requires the configured token, which it read from the file
        assert httpx.get(f"{url}/api/rollouts", timeout=10).status_code == 401
        signed = httpx.get(f"{url}/api/rollouts", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert signed.status_code == 503, signed.text  # past the guard; no sink serves queries here
    assert TOKEN not in (stack.logs / "dashboard.log").read_text()
