"""Run a stream worker process (``agentstream worker``)."""

from __future__ import annotations

import logging

from agentstream.settings import Settings
from agentstream.topics.admin import ensure_topics
from agentstream.topics.catalogue import changelog_topics

from .worker import build_worker


def run_worker(settings: Settings, *, loglevel: str = "WARNING") -> None:
    """Run one stream worker until SIGINT/SIGTERM; workers of the same app id share the partitions."""
    from faust.worker import Worker

    # The tables' changelogs exist before anything can write to them: a producer's first write
    # would let the broker auto-create them with its default partition count.
    ensure_topics(settings, changelog_topics(settings.streams.app_id))
    app = build_worker(settings).app
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False, override_logging=False)
    logging.getLogger("faust").setLevel(loglevel)
    worker.execute_from_commandline()
