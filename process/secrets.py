"""Secrets our processes share by file: generated once, readable by the owner only.

A secret (the query endpoint's credentials, the dashboard token, the metrics token) lives in
``<data_dir>/secrets/<name>``, mode 0600 in a 0700 directory. Members of a stack are told the
file's path, never the secret itself: an environment variable is visible to every process of the
user (``/proc/<pid>/environ``, ``ps e``) and is inherited by whatever a member starts.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path

SECRETS_DIR = "secrets"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make it 0700: only its owner may list or enter it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def secret_path(data_dir: Path, name: str) -> Path:
    """Where the secret ``name`` of the stack in ``data_dir`` lives."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"not a secret name: {name!r}")
    return data_dir / SECRETS_DIR / name


def read_secret(path: Path) -> str:
    """The secret in ``path``; refuses a file that others may read (it may have leaked)."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    value = path.read_text().strip()
    if not value:
        raise ValueError(f"{path} is empty")
    return value


def ensure_secret(path: Path, nbytes: int = 32) -> str:
    """The secret in ``path``, generated (URL-safe, ``nbytes`` of randomness) if there is none yet.

    Creation is race-free: the file is created with O_EXCL at mode 0600, so two processes that start
    together agree on one secret (the loser reads the winner's).
    """
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # The winner may not have written it yet: wait (briefly) for the content.
        for _ in range(100):
            if path.stat().st_size:
                break
            time.sleep(0.01)
        return read_secret(path)
    value = secrets.token_urlsafe(nbytes)
    with os.fdopen(fd, "w") as file:
        file.write(value + "\n")
    return value


def bearer_authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>`` (constant-time compare: the
    answer does not tell how much of a guess was right); any header passes when ``token`` is None."""
    if token is None:
        return True
    if not header or header[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


def write_secret(path: Path, value: str) -> Path:
    """Keep ``value`` in ``path`` (0600, in a 0700 directory), replacing what was there; returns ``path``.

    For a secret that was given, not generated (a Kafka password from the settings): the file is
    made private before the value is written, so it is never readable by others.
    """
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as file:
        file.write(value + "\n")
    return path
