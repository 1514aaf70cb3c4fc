"""Secrets shared by file: private, generated once, agreed on by racing processes."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agentstream.process.secrets import ensure_secret, read_secret, secret_path


def test_a_secret_is_generated_once_private_and_kept(tmp_path: Path) -> None:
    path = secret_path(tmp_path, "query.token")
    first = ensure_secret(path)
    assert len(first) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_secret(path) == first == read_secret(path)


def test_racing_creators_agree_on_one_secret(tmp_path: Path) -> None:
    path = secret_path(tmp_path, "race.token")
    with ThreadPoolExecutor(16) as pool:
        values = set(pool.map(lambda _: ensure_secret(path), range(64)))
    assert values == {read_secret(path)}


def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    path = secret_path(tmp_path, "leaky.token")
    ensure_secret(path)
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="readable by others"):
        read_secret(path)


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b"])
def test_secret_names_cannot_leave_the_secrets_dir(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        secret_path(tmp_path, name)
