"""The dashboard's sign-in state on a fake clock: session expiry and revocation, the sign-in limit,
and how the token reaches a stack's dashboard (a 0600 file, never the environment)."""

from __future__ import annotations

import stat
from pathlib import Path

from pydantic import SecretStr

from agentstream.analytics.dashboard_auth import (
    Sessions,
    SignInLimit,
    dashboard_token,
    token_file_env,
)
from agentstream.settings import DashboardSettings, Settings

TOKEN = "configured-dashboard-token"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_when_idle_or_old_and_logout_revokes() -> None:
    clock = Clock()
    sessions = Sessions(idle_seconds=10, max_seconds=25, clock=clock)
    first = sessions.create()
    assert first and sessions.check(first) and not sessions.check("made-up") and not sessions.check(None)
    clock.now += 9
    assert sessions.check(first)  # used: the idle timer starts again
    clock.now += 9
    assert sessions.check(first)
    clock.now += 9  # 27 s after sign-in: past the absolute limit though never idle for 10 s
    assert not sessions.check(first)

    idle = sessions.create()
    clock.now += 10.5
    assert not sessions.check(idle)

    revoked = sessions.create()
    assert sessions.check(revoked)
    sessions.revoke(revoked)
    assert not sessions.check(revoked)
    assert sessions.create() != sessions.create()  # random ids


def test_sign_in_limit_per_client_and_overall() -> None:
    clock = Clock()
    limit = SignInLimit(per_client=3, total=5, window_seconds=60, clock=clock)
    for _ in range(3):
        assert limit.retry_after("10.0.0.1") == 0
        limit.failed("10.0.0.1")
    assert limit.retry_after("10.0.0.1") == 60  # locked until the first failure leaves the window
    assert limit.retry_after("10.0.0.2") == 0  # others are not
    clock.now += 20
    limit.failed("10.0.0.2")
    limit.failed("10.0.0.3")  # 5 failures overall
    assert limit.retry_after("10.0.0.4") == 40  # everyone waits for the oldest to leave the window
    clock.now += 40
    assert limit.retry_after("10.0.0.1") == 0 and limit.retry_after("10.0.0.4") == 0


def test_the_token_goes_to_children_by_file_never_by_environment(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dashboard=DashboardSettings(token=SecretStr(TOKEN)))
    env = settings.to_env()
    assert TOKEN not in "".join(env.values()) and not any("DASHBOARD__TOKEN=" in k for k in env)
    assert "AGENTSTREAM_DASHBOARD__TOKEN" not in env

    handed = token_file_env(settings)
    path = Path(handed["AGENTSTREAM_DASHBOARD__TOKEN_FILE"])
    assert path == tmp_path / "secrets" / "dashboard.token" and TOKEN not in str(handed)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    child = Settings(data_dir=tmp_path, dashboard=DashboardSettings(token_file=path))
    assert dashboard_token(child) == TOKEN  # the child reads it from the file

    generated = Settings(data_dir=tmp_path / "other")
    handed = token_file_env(generated)  # none configured: one is generated
    token = dashboard_token(generated)
    assert len(token) >= 32 and token == Path(handed["AGENTSTREAM_DASHBOARD__TOKEN_FILE"]).read_text().strip()
    assert dashboard_token(generated) == token  # and kept
