"""Run a stream worker process (``agentstream worker``)."""

from __future__ import annotations

import logging

from agentstream.settings import Settings
from agentstream.topics.admin import ensure_topics
from agentstream.topics.auth import check_credentials
from agentstream.topics.catalogue import changelog_topics

from .archive import Archive
from .metrics_export import start_worker_ops
from .worker import build_worker


def run_worker(settings: Settings, *, loglevel: str = "WARNING", archive: Archive | None = None) -> None:
    """Run one stream worker until SIGINT/SIGTERM; workers of the same app id share the partitions.

    ``archive``: what the sink stored, for what the worker loses with a broker's log (see
    :mod:`.archive`).
    """
    from faust.worker import Worker

    # The tables' changelogs exist before anything can write to them: a producer's first write
    # would let the broker auto-create them with its default partition count.
    check_credentials(settings.admin_config())  # a wrong password: exit naming broker and principal
    ensure_topics(settings, changelog_topics(settings.streams.app_id))
    stream_worker = build_worker(settings, archive=archive)
    app = stream_worker.app
    ops = start_worker_ops(settings, stream_worker.stats)  # /metrics, /healthz, /readyz
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False, override_logging=False)
    logging.getLogger("faust").setLevel(loglevel)
    try:
        worker.execute_from_commandline()
    finally:
        if ops is not None:
            ops.stop()
