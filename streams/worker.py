"""A stream worker: the hops composed on one Faust app.

``build_worker(settings)`` creates the app (:func:`.app.create_app`) and declares on it

* the **lifecycle** hop (:mod:`.lifecycle_agent`): rollout events (and rewards, for metrics) → the
  ``rollouts`` table, whose changelog is the compacted ``rollout-state`` topic → tasks; plus the
  timer that turns overdue attempts into ``attempt_timeout`` / ``attempt_unresponsive`` events;
* the **triplet joiner** hop (:mod:`.joiner_agent`): LLM-call spans and rewards → the ``joins``
  table → ``triplets`` (see :mod:`.join`);
* the **per-version metrics** hop (:mod:`.metrics_table`): the ``metric-partials`` table, flushed
  to the ``metrics`` topic by a timer;

and, for the worker as a whole, its status file, the warm-up of the output topics and the
publication of its output schemas.

All source topics are keyed by rollout id with one partition count, so every table is partitioned
like its sources and a worker owns whole rollouts. Outputs carry deterministic ids (attempt ids,
triplet id + version, metric partial + revision): replays after a crash re-send the same records and
the idempotent sinks keep one copy.
"""

from __future__ import annotations

import asyncio
import os
import time

from agentstream.process.status import write_status
from agentstream.schemas import load_schema
from agentstream.settings import Settings
from agentstream.topics.catalogue import (
    DEAD_LETTER,
    METRICS,
    REWARDS,
    ROLLOUT_EVENTS,
    SCHEMAS,
    SPANS,
    TASKS,
    TRIPLETS,
)

from .app import create_app
from .archive import Archive
from .joiner_agent import JoinerHop
from .lifecycle_agent import LifecycleHop
from .metrics_table import MetricsHop
from .outputs import DeadLetters, OutputSink, WorkerStats
from .records import Serdes, register_codecs

#: the schemas of what a worker writes, published to the schemas topic when no registry is used
OUTPUT_SCHEMAS = ("task", "triplet", "rollout_state", "version_metrics", "rollout_event")


class StreamWorker:
    """A stream worker: its app with the hops declared on it, plus the worker's own timer and tasks.

    Args:
        settings: resolved (bootstrap servers set).
        outputs: replaces the librdkafka producer of the output records and table changelogs (a
            test records them); the source topics are still read by the app's Kafka consumer.
    """

    def __init__(
        self, settings: Settings, *, outputs: OutputSink | None = None, archive: Archive | None = None
    ) -> None:
        source_topics = [settings.topic(t.name) for t in (SPANS, REWARDS, ROLLOUT_EVENTS)]
        self.app = app = create_app(settings, guarded_topics=source_topics, outputs=outputs)
        register_codecs(settings)
        serdes = Serdes.create(settings)
        self.stats = stats = WorkerStats()
        dead_letters = DeadLetters(
            app.outputs, settings.topic(DEAD_LETTER.name), settings.streams.app_id, stats
        )

        self.metrics = MetricsHop(app, serdes, stats, archive)
        self.lifecycle = LifecycleHop(app, serdes, stats, dead_letters, self.metrics)
        self.joiner = JoinerHop(app, serdes, stats, dead_letters, self.lifecycle, archive)
        self.write_status = app.timer(1.0)(self._write_status)
        self.warm_outputs = app.task(self._warm_outputs)
        self.publish_schemas = app.task(self._publish_schemas)

        self._settings = settings

    async def _write_status(self) -> None:
        """A status file per worker: what `agentstream up` shows and tests wait for."""
        app, stats = self.app, self.stats
        events_topic = self._settings.topic(ROLLOUT_EVENTS.name)
        assigned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == events_topic)
        status = {
            "pid": os.getpid(),
            "ready": bool(assigned) and not app.rebalancing and not getattr(app, "in_recovery", False),
            "assigned_partitions": assigned,
            "gap_rereads": app.gap_guard.rereads,
            "duplicates_dropped": app.gap_guard.duplicates_dropped,
            "gaps_accepted": app.gap_guard.gaps_accepted,
            "commits_refused": app.gap_guard.commits_refused,
            "span_rereads": self.joiner.calls.rereads,
            "calls_read_back": self.joiner.archive.calls_found,
            "metric_recounts": self.metrics.recount.recounts,
            "uptime_s": round(time.monotonic() - stats.started, 1),
            **{k: v for k, v in vars(stats).items() if k != "started"},
        }
        write_status(self._settings.data_dir, status)

    async def _warm_outputs(self) -> None:
        """Fetch the output topics' metadata before the first records go out."""
        topic = self._settings.topic
        topics = [topic(t.name) for t in (ROLLOUT_EVENTS, TASKS, TRIPLETS, METRICS, DEAD_LETTER)]
        tables = (self.lifecycle.rollouts, self.joiner.joins, self.metrics.metric_partials)
        topics += [table.changelog_topic.get_topic_name() for table in tables]
        await asyncio.get_running_loop().run_in_executor(None, self.app.outputs.warm, topics)

    async def _publish_schemas(self) -> None:
        """Without a schema registry, readers find our writer schemas in the schemas topic."""
        if self._settings.schema_registry_url:
            return
        for stem in OUTPUT_SCHEMAS:
            schema = load_schema(stem)
            self.app.outputs.send(
                self._settings.topic(SCHEMAS.name), schema.fingerprint.hex().encode(), schema.json.encode()
            )


def build_worker(
    settings: Settings, *, outputs: OutputSink | None = None, archive: Archive | None = None
) -> StreamWorker:
    """A stream worker for ``settings`` (resolved: bootstrap servers set); see :class:`StreamWorker`."""
    return StreamWorker(settings, outputs=outputs, archive=archive)
