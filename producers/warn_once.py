"""Warn once per kind: the first time a problem shows up it is a WARNING, later ones go to DEBUG.

The SDK reports what it could not record without ever raising into the agent's code; a problem
that repeats on every call would otherwise flood the agent's logs.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

_seen: set[str] = set()
_seen_lock = threading.Lock()


def warn_once(logger: logging.Logger, kind: str, message: str, *args: Any, exc_info: bool = False) -> None:
    """Log ``message % args`` at WARNING the first time ``kind`` is seen in this process, else at
    DEBUG. ``kind`` names the problem (one per place and cause), not the values involved."""
    with _seen_lock:
        first = kind not in _seen
        _seen.add(kind)
    if first:
        logger.warning(
            message + " Further problems of this kind are logged at DEBUG.", *args, exc_info=exc_info
        )
    else:
        logger.debug(message, *args, exc_info=exc_info)
