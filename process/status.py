"""Status files: what a running process of ours tells the others (where it serves, how it is doing).

Each is a small JSON document stamped with the writer's pid (:class:`PidStatus`). It is replaced
atomically, so a reader sees the previous or the next version and never half of one, and it counts
only while its writer lives: a reader gets ``None`` for a missing or unreadable file and for one
left behind by a process that died without removing it.

The files of this module: the running ``agentstream up`` (:class:`StackState`,
``<data_dir>/stack.json``) and each stream worker's (``<data_dir>/streams/worker-<pid>.json``).
The ClickHouse gateway and the dashboard declare theirs next to their servers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from agentstream.process.lifecycle import pid_alive

STACK_FILE = "stack.json"


def replace_file(path: Path, data: str | bytes) -> Path:
    """Give ``path`` the content ``data`` in one step: readers see the old file or the new one.

    The data goes to a scratch file beside ``path`` (same file system) that then replaces it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # One scratch name per writing thread: two writers never interleave in one scratch file.
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if isinstance(data, str):
            scratch.write_text(data)
        else:
            scratch.write_bytes(data)
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return path


class PidStatus(BaseModel):
    """A status a process advertises in a file, valid while the process ``pid`` lives.

    Subclasses add their fields and say where their file lives.
    """

    pid: int

    def write_to(self, path: Path) -> Path:
        """Replace the file at ``path`` with this status (atomically)."""
        return replace_file(path, self.model_dump_json())

    @classmethod
    def read_from(cls, path: Path) -> Self | None:
        """The status in ``path``; None when it is missing, unreadable or its process is gone."""
        try:
            status = cls.model_validate_json(path.read_bytes())
        except (OSError, ValueError):  # ValidationError is a ValueError
            return None
        # pid 0 or below would address process groups, which "exist" for any caller.
        return status if status.pid > 0 and pid_alive(status.pid) else None

    def withdraw_from(self, path: Path) -> None:
        """Remove the file at ``path`` if it still holds this status (a newer one stays)."""
        if type(self).read_from(path) == self:
            path.unlink(missing_ok=True)


class StackState(PidStatus):
    """What a running `agentstream up` advertises in ``<data_dir>/stack.json``."""

    bootstrap_servers: str | None = None
    started_at: float = 0.0

    @staticmethod
    def file_for(data_dir: Path) -> Path:
        """Where the stack of ``data_dir`` advertises itself."""
        return data_dir / STACK_FILE

    @classmethod
    def load(cls, data_dir: Path) -> StackState | None:
        """The live stack of ``data_dir``; None when none runs."""
        return cls.read_from(cls.file_for(data_dir))

    def save(self, data_dir: Path) -> None:
        """Advertise this stack for ``data_dir``."""
        self.write_to(self.file_for(data_dir))

    def withdraw(self, data_dir: Path) -> None:
        """Remove the advertisement unless another stack has replaced it."""
        self.withdraw_from(self.file_for(data_dir))


class _WorkerStatus(PidStatus):
    # The worker decides what it reports; only the pid is required here.
    model_config = ConfigDict(extra="allow")


def status_path(data_dir: Path, pid: int) -> Path:
    """The file a stream worker rewrites every second."""
    return data_dir / "streams" / f"worker-{pid}.json"


def write_status(data_dir: Path, status: Mapping[str, Any]) -> Path:
    """Publish a stream worker's status (a JSON object with its ``pid``) for supervisors and tests."""
    return _WorkerStatus.model_validate(status).write_to(status_path(data_dir, int(status["pid"])))


def read_status(data_dir: Path, pid: int) -> dict[str, Any] | None:
    """The last status of the live worker ``pid``, or ``None`` if there is none (yet, or any more)."""
    status = _WorkerStatus.read_from(status_path(data_dir, pid))
    return status.model_dump() if status is not None else None
