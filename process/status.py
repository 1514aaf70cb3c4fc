"""Where a stream worker reports its status (no Faust import: supervisors and tests read it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def status_path(data_dir: Path, pid: int) -> Path:
    """The file a stream worker rewrites every second."""
    return data_dir / "streams" / f"worker-{pid}.json"


def read_status(data_dir: Path, pid: int) -> dict[str, Any] | None:
    """The last status of the worker ``pid``, or ``None`` if there is none yet."""
    try:
        return json.loads(status_path(data_dir, pid).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None
