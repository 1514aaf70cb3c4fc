"""What a worker lost with the broker's log, read back from what the sink stored.

The worker's tables (rollout states, joins, metric partials) live in Kafka changelogs. When the
broker loses its log (the embedded broker keeps it in memory only) they are gone, and so are the
spans the joiner would re-read, but the sink had already landed them in ClickHouse. Two things read
them back through an :class:`Archive` (the worker's composition passes
:class:`agentstream.sinks.archive.ClickHouseArchive`; streams never talk to ClickHouse themselves):

* :class:`CallArchive`: the LLM calls of a rollout, for a reward whose calls the joiner lost, and
  the versions their triplets reached, so the joiner's next versions outrank them (readers keep the
  highest version of a triplet: a restarted count would lose to what was stored before).
* :class:`MetricsRecount`: a metrics partial the worker no longer holds, recounted from the stored
  rollout states with the same arithmetic (:mod:`.metrics`), so a window's metrics are not split
  between a pre-outage and a post-outage partial of which readers keep only one.

Both answer ``None`` when there is no archive or it cannot be asked (no sink serving queries): the
worker then goes on as it would without them. They are asked only for a reward whose rollout holds
no call and for the first partial of a window, so they cost a small query in those cases only.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from agentstream.schemas import RolloutState

from . import metrics as version_metrics
from .calls import call_content
from .credit import LlmCall
from .join import llm_call_of

logger = logging.getLogger(__name__)


class Archive(Protocol):
    """What the sink stored, by the questions a worker asks; every method may raise."""

    def llm_spans(self, rollout_id: str) -> list[dict[str, Any]]:
        """The rollout's LLM-call spans, as dicts with the fields of a decoded span record (``rollout_id``,
        ``parent_span_id`` and ``bool_attributes`` may be left out)."""
        ...

    def triplet_versions(self, rollout_id: str) -> dict[str, int]:
        """The highest stored version of each of the rollout's triplets, by triplet id."""
        ...

    def stored_revision(self, name: str, version: str, window_start_us: int, partition: int) -> int:
        """The highest stored revision of a metrics partial; 0 when none is stored."""
        ...

    def ended_states(self, partition: int, start_us: int, end_us: int) -> list[RolloutState]:
        """The newest state of each rollout of ``partition`` that ended in the window."""
        ...


class _Asker:
    """Asks the archive; a failure is logged (once at WARNING: a worker without a sink would say
    it again and again, then at DEBUG) and answered with ``None``."""

    def __init__(self, archive: Archive | None) -> None:
        self.archive = archive
        self.failures = 0

    def ask(self, question: Any, *args: Any, what: str) -> Any:
        if self.archive is None:
            return None
        try:
            return question(*args)
        except Exception as e:  # an unreachable ClickHouse must not stop the worker
            self.failures += 1
            log = logger.warning if self.failures == 1 else logger.debug
            log("Worker: cannot read %s back from the sink's ClickHouse: %s", what, e)
            return None


class CallArchive:
    """A rollout's LLM calls and their triplet content, read back from the archive."""

    def __init__(self, archive: Archive | None) -> None:
        self._asker = _Asker(archive)
        self.lookups = 0
        self.calls_found = 0

    def calls_of(self, rollout_id: str) -> list[tuple[LlmCall, dict[str, Any]]] | None:
        """The rollout's calls with their triplet content; ``None`` when the archive cannot be asked
        (the caller tries again with a later reward). Blocking: a short indexed query."""
        archive = self._asker.archive
        if archive is None:
            return None
        self.lookups += 1
        spans = self._asker.ask(archive.llm_spans, rollout_id, what=f"the calls of rollout {rollout_id}")
        if spans is None:
            return None
        # another rollout's span (span ids are unique per trace only) must never lend its content
        found = [
            (llm_call_of(span), call_content(span))
            for span in spans
            if span.get("rollout_id", rollout_id) == rollout_id
        ]
        self.calls_found += len(found)
        if found:
            logger.info("Joiner: rollout %s: %d calls read back from ClickHouse", rollout_id, len(found))
        return found

    def triplet_versions(self, rollout_id: str) -> dict[str, int]:
        """The highest stored version of each of the rollout's triplets (triplet id -> version);
        empty when none is stored or the archive cannot be asked."""
        archive = self._asker.archive
        if archive is None:
            return {}
        what = f"the triplet versions of rollout {rollout_id}"
        return dict(self._asker.ask(archive.triplet_versions, rollout_id, what=what) or {})


class MetricsRecount:
    """Rebuild a metrics partial the worker does not hold from what the sink stored.

    A partial is absent from the worker's table when its window is new, or when the table was lost.
    In the second case the sink stored the rollouts the lost partial counted: they are counted again
    with :func:`.metrics.add_outcome` (the newest state of each, so its late rewards are in), their ids
    are kept in the partial so that a re-delivered end of one of them is not counted twice, and the
    revision starts above the stored partial's, which the recount supersedes.

    Args:
        archive: what the sink stored; ``None`` disables recounts.
        window_seconds: the metrics window.
    """

    def __init__(self, archive: Archive | None, window_seconds: float) -> None:
        self._asker = _Asker(archive)
        self._window_seconds = window_seconds
        self.recounts = 0

    def partial(self, key: str) -> dict[str, Any] | None:
        """The recounted partial of ``key`` (see :func:`.metrics.partial_key`); ``None`` when nothing
        was stored for it (a new window) or the archive cannot be asked."""
        archive = self._asker.archive
        if archive is None:
            return None
        name, version, start, partition, mode = version_metrics.parse_key(key)
        _, end = version_metrics.window_of(start, self._window_seconds)
        what = f"the metrics partial {name}/{version}@{start}/p{partition}"
        stored = self._asker.ask(archive.stored_revision, name, version, start, partition, what=what)
        if not stored:
            return None
        states = self._asker.ask(archive.ended_states, partition, start, end, what=what)
        if states is None:
            return None
        partial = version_metrics.empty_partial(end)
        counted = []
        for state in states:
            ended = state.ended_at
            if ended is None or not start <= ended < end:
                continue  # its newest state ended elsewhere (or not at all)
            if (name, version) in version_metrics.rollout_versions(state) and mode in ("", state.mode):
                version_metrics.add_outcome(partial, state)
                counted.append(state.rollout_id)
        partial["revision"] = stored + 1
        partial[version_metrics.RECOUNTED] = counted
        self.recounts += 1
        logger.info("Worker: %s recounted from ClickHouse: %d rollouts", what, len(counted))
        return partial
