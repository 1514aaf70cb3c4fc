"""Who may use the query endpoint: a read credential and (optionally) a write credential.

The sink's query endpoint (:mod:`.gateway`) always needs one of them. Both are generated secrets in
files (``<data_dir>/secrets/query.token`` and ``query-write.token``, mode 0600): `agentstream up`
creates them before it starts the sink, the sink creates them when it runs alone, and every reader
(:func:`agentstream.clickhouse.connect.connect`) reads the file itself. They are never put in an
environment variable or a log line.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agentstream.process.secrets import ensure_secret, read_secret, secret_path
from agentstream.settings import Settings

READ_TOKEN = "query.token"
WRITE_TOKEN = "query-write.token"


class Role(enum.Enum):
    """What a credential may do: READ runs read-only queries, WRITE may also change data."""

    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class QueryCredentials:
    """The tokens the query endpoint accepts; ``write`` None serves reads only."""

    read: str = field(repr=False)
    write: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.read or (self.write is not None and not self.write):
            raise ValueError("query endpoint tokens must not be empty")
        if self.write is not None and secrets.compare_digest(self.read.encode(), self.write.encode()):
            raise ValueError("the read and write tokens of the query endpoint must differ")

    def role_of(self, offered: Iterable[str]) -> Role | None:
        """The role of the first offered token that matches (constant-time compares), else None."""
        for candidate in offered:
            given = candidate.encode()
            # Both comparisons always run: the time taken says nothing about which one matched.
            is_write = self.write is not None and secrets.compare_digest(given, self.write.encode())
            is_read = secrets.compare_digest(given, self.read.encode())
            if is_write:
                return Role.WRITE
            if is_read:
                return Role.READ
        return None


def token_file(settings: Settings, *, write: bool = False) -> Path:
    """Where the query endpoint's read (or write) credential of these settings lives."""
    configured = settings.sink.query_write_token_file if write else settings.sink.query_token_file
    return configured or secret_path(settings.data_dir, WRITE_TOKEN if write else READ_TOKEN)


def ensure_credentials(settings: Settings) -> QueryCredentials:
    """The endpoint's credentials, generated (0600, race-free) where missing.

    The write credential exists only while ``sink.query_write_role`` is on.
    """
    read = ensure_secret(token_file(settings))
    write = ensure_secret(token_file(settings, write=True)) if settings.sink.query_write_role else None
    return QueryCredentials(read, write)


def read_token(settings: Settings, *, write: bool = False) -> str:
    """The credential a client presents to the query endpoint.

    Raises:
        RuntimeError: the file is missing, empty or readable by others, with what to do about it.
    """
    path = token_file(settings, write=write)
    try:
        return read_secret(path)
    except FileNotFoundError as e:
        role = "write" if write else "read"
        hint = (
            " (the write role is off: set sink.query_write_role)"
            if write and not settings.sink.query_write_role
            else ""
        )
        raise RuntimeError(
            f"no {role} credential for the query endpoint at {path}{hint}: `agentstream up` or "
            "`agentstream sink` creates it; run as the user who started them"
        ) from e
    except (PermissionError, ValueError) as e:
        raise RuntimeError(f"cannot use the query endpoint credential {path}: {e}") from e
