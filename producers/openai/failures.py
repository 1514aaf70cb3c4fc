"""Capture failures: the agent's call goes on, and the user learns once why it was not recorded."""

from __future__ import annotations

import logging
import sys

from ..warn_once import warn_once

logger = logging.getLogger("agentstream.producers.openai")


def capture_failed(what: str) -> None:
    """Log a failure to record an OpenAI call; call it from the ``except`` block that caught it.

    The first failure of each kind (``what``, one per call site) is a WARNING naming the
    exception; later ones, which would repeat it on every call, go to DEBUG. Never raises.
    """
    error = sys.exc_info()[1]
    reason = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    warn_once(
        logger,
        f"openai capture: {what}",
        "agentstream: %s (%s); the OpenAI call itself is unaffected.",
        what,
        reason,
        exc_info=True,
    )
