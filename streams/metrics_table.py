"""Per-version metrics: the ``metric-partials`` table and the timer that flushes it to ``metrics``.

    rollout ended / late reward (counted by the lifecycle and the joiner)
        ──▶ metric-partials table (partial key -> counters) ──flush timer──▶ metrics topic

The partials are pre-aggregated per source partition and re-emitted with a growing revision (see
:mod:`.metrics` for the keys and the arithmetic); this hop has no agent of its own: the table is
written while the lifecycle and the joiner process their events, which is what puts each partial on
the partition of the rollouts it counts.

Declared by a class that receives the app, like every hop: topic names and partition counts come
from the worker's settings, resolved when the worker starts, so nothing can be declared at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentstream.schemas import RolloutState, now_us
from agentstream.topics.catalogue import METRICS

from . import metrics as version_metrics
from .app import StreamApp
from .archive import Archive, MetricsRecount
from .outputs import WorkerStats
from .records import JsonValue, Serdes, rollout_table

#: what a partial is: counters by name (see :func:`.metrics.empty_partial`)
Partial = dict[str, Any]


class MetricsHop:
    """The ``metric-partials`` table and its flush timer.

    Args:
        app: the worker's app (see :func:`.app.create_app`); its settings name the topic and the
            window and flush interval.
        serdes: the worker's encoders.
        stats: the worker's counters.
        archive: what the sink stored, to recount partials the worker lost; ``None``: no recounts.
    """

    def __init__(
        self, app: StreamApp, serdes: Serdes, stats: WorkerStats, archive: Archive | None = None
    ) -> None:
        settings = app.agentstream
        #: metrics partial key -> counters (see .metrics)
        self.metric_partials = rollout_table(app, "metric-partials", JsonValue, settings.partitions)
        self.flush_metrics = app.timer(settings.streams.metrics_flush_seconds)(self._flush_metrics)

        self._outputs = app.outputs
        self._metrics_topic = settings.topic(METRICS.name)
        self._window_seconds = settings.streams.metrics_window_seconds
        self._encode = serdes.encode_metrics
        self._stats = stats
        #: partials this worker lost (with the broker's log), recounted from ClickHouse
        self.recount = MetricsRecount(archive, self._window_seconds)
        self._started_us = now_us()
        # In memory only: after a restart every partial is emitted once more (same revision, which
        # readers keep once).
        self._emitted_revisions: dict[str, int] = {}

    # ---- counting (while an agent processes an event of the rollout's partition) -------------------
    def count_outcome(self, state: RolloutState, partition: int) -> None:
        """Count a rollout that just ended."""

        def count(partial: Partial) -> None:
            # a recount from ClickHouse may have counted this rollout already (a re-delivered end)
            if state.rollout_id not in partial.get(version_metrics.RECOUNTED, ()):
                version_metrics.add_outcome(partial, state)

        self._update(state, partition, count)

    def count_late_reward(self, state: RolloutState, value: float, partition: int) -> None:
        """Count a reward that arrived after its rollout ended."""
        self._update(state, partition, lambda partial: version_metrics.add_reward(partial, value))

    def _update(self, state: RolloutState, partition: int, update: Callable[[Partial], None]) -> None:
        """Apply ``update(partial)`` to the partials of the rollout's versions and mode in its end
        window."""
        start, end = version_metrics.window_of(state.ended_at or now_us(), self._window_seconds)
        for name, version in version_metrics.rollout_versions(state):
            key = version_metrics.partial_key(name, version, start, partition, state.mode)
            partial = self.metric_partials.get(key)
            if partial is None and start < self._started_us:
                # A window that began before this worker did may have had a partial the worker lost
                # (a broker that lost its log); one that began since is new. Blocking, like every
                # read-back in the hops (see JoinerHop._emit_triplets), and once per partial.
                partial = self.recount.partial(key)
            if partial is None:
                partial = version_metrics.empty_partial(end)
            update(partial)
            self.metric_partials[key] = partial

    # ---- the flush timer ---------------------------------------------------------------------------
    async def _flush_metrics(self) -> None:
        self.flush(now_us())

    def flush(self, emitted_at: int) -> None:
        """Send every partial changed since it was last sent to the metrics topic."""
        for key, partial in list(self.metric_partials.items()):
            if partial is None or self._emitted_revisions.get(key) == partial["revision"]:
                continue
            record = version_metrics.to_record(key, partial, emitted_at)
            self._outputs.send(self._metrics_topic, key.encode(), self._encode(record.to_avro()))
            self._emitted_revisions[key] = partial["revision"]
            self._stats.metrics_emitted += 1
