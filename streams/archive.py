"""What a worker lost with the broker's log, read back from ClickHouse.

The worker's tables (rollout states, joins, metric partials) live in Kafka changelogs. When the
broker loses its log (the embedded broker keeps it in memory only) they are gone, but the sink had
already landed their records in ClickHouse. Two things read them back:

* :class:`CallArchive`: the LLM calls of a rollout, for a reward whose calls the joiner lost.
* :class:`MetricsRecount`: a metrics partial the worker no longer holds, recounted from the stored
  rollout states with the same arithmetic (:mod:`.metrics`), so a window's metrics are not split
  between a pre-outage and a post-outage partial of which readers keep only one.

Both answer ``None`` when ClickHouse cannot be asked (no sink serving queries): the worker then goes
on as it would without them.

The joiner keeps a rollout's calls in its ``joins`` table, whose changelog lives in Kafka. When the
broker loses its log (the embedded broker keeps it in memory only) the table and the spans topic are
both gone, but the sink had already landed the spans in ClickHouse. A reward that arrives for such a
rollout finds no call to credit; without this archive it would wait forever and its triplets would
never be made. :class:`CallArchive` reads the rollout's LLM calls (and their triplet content) from
the ``spans`` table instead.

It is asked only for a reward whose rollout holds no call, and once per rollout (the joiner records
the lookup in its table), so it costs one small query per rollout in the rare case, nothing otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agentstream.clickhouse.connect import chdb_path_of, connect
from agentstream.clickhouse.gateway import GatewayState
from agentstream.schemas import AttemptState, RolloutState, RolloutStatus, genai
from agentstream.settings import Settings

from . import metrics as version_metrics
from .calls import call_content
from .credit import LlmCall

logger = logging.getLogger(__name__)

#: the span fields the joiner needs (as :func:`.calls.call_content` and :class:`.credit.LlmCall` read them)
_CALLS = """
SELECT span_id, attempt_id, sequence_id,
       toUnixTimestamp64Micro(start_time) AS start_us, toUnixTimestamp64Micro(end_time) AS end_us,
       attributes, prompt_token_ids, response_token_ids, response_logprobs, resource_name, resource_version
FROM spans FINAL
WHERE rollout_id = {rollout_id:String} AND kind = 'llm'
ORDER BY start_time, span_id
"""


def query_client(settings: Settings) -> Any:
    """A ClickHouse client for reading back, never one that opens a chDB directory itself: a worker
    that did would lock the sink out of it. Without a sink serving queries this raises."""
    path = chdb_path_of(settings.default_clickhouse_dsn)
    if path is not None and GatewayState.load(path) is None:
        raise RuntimeError("no sink serves queries for this chDB directory")
    return connect(settings, gateway_wait=0.0)


class _Reader:
    """A lazily opened client that is dropped after a failure; failures are logged once at WARNING."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._client: Any = None
        self.failures = 0

    def rows(self, query: str, parameters: dict[str, Any], what: str) -> list[dict[str, Any]] | None:
        try:
            if self._client is None:
                self._client = self._connect()
            return list(self._client.query(query, parameters=parameters).named_results())
        except Exception as e:  # an unreachable ClickHouse must not stop the worker
            self.failures += 1
            self._client = None
            # once at WARNING (a worker without a sink would say it again and again), then at DEBUG
            log = logger.warning if self.failures == 1 else logger.debug
            log("Worker: cannot read %s from ClickHouse: %s", what, e)
            return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class CallArchive:
    """A rollout's LLM calls from the ClickHouse ``spans`` table.

    Args:
        connect: opens a clickhouse-connect client (called lazily, again after a failure).
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._reader = _Reader(connect)
        self.lookups = 0
        self.calls_found = 0

    def calls_of(self, rollout_id: str) -> list[tuple[LlmCall, dict[str, Any]]] | None:
        """The rollout's calls with their triplet content; ``None`` when ClickHouse cannot be asked
        (the caller tries again with a later reward). Blocking: a short indexed query."""
        self.lookups += 1
        rows = self._reader.rows(_CALLS, {"rollout_id": rollout_id}, f"the calls of rollout {rollout_id}")
        if rows is None:
            return None
        found = [_call_of(rollout_id, row) for row in rows]
        self.calls_found += len(found)
        if found:
            logger.info("Joiner: rollout %s: %d calls read back from ClickHouse", rollout_id, len(found))
        return found

    def close(self) -> None:
        self._reader.close()


def _call_of(rollout_id: str, row: dict[str, Any]) -> tuple[LlmCall, dict[str, Any]]:
    attributes = dict(row["attributes"])
    span = {
        "rollout_id": rollout_id,
        "span_id": row["span_id"],
        "attempt_id": row["attempt_id"],
        "sequence_id": row["sequence_id"],
        "start_time": int(row["start_us"]),
        "end_time": int(row["end_us"]),
        "attributes": attributes,
        "prompt_token_ids": list(row["prompt_token_ids"]),
        "response_token_ids": list(row["response_token_ids"]),
        "response_logprobs": [float(x) for x in row["response_logprobs"]],
        "resource_name": row["resource_name"],
        "resource_version": row["resource_version"],
    }
    call = LlmCall(
        span_id=span["span_id"],
        attempt_id=span["attempt_id"],
        sequence_id=span["sequence_id"],
        start_us=span["start_time"],
        end_us=span["end_time"],
        response_id=attributes.get(genai.RESPONSE_ID),
    )
    return call, call_content(span)


#: the newest stored state of each rollout of a source partition that ended in a window
_ENDED_STATES = """
SELECT rollout_id, status, resources, reward_count, reward_sum, reward_sum_squares, llm_calls,
       input_tokens, output_tokens, created_at, ended_at, length(attempts) AS attempt_count,
       tupleElement(attempts[-1], 'started_at') AS attempt_started_at,
       tupleElement(attempts[-1], 'ended_at') AS attempt_ended_at,
       tupleElement(attempts[-1], 'resources') AS attempt_resources
FROM rollout_states
WHERE rollout_id IN (
    SELECT rollout_id FROM rollout_states
    WHERE _partition = {partition:UInt32}
      AND ended_at >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')
      AND ended_at < fromUnixTimestamp64Micro({end:Int64}, 'UTC'))
ORDER BY rollout_id, version DESC
LIMIT 1 BY rollout_id
"""

_STORED_REVISION = """
SELECT max(revision) AS revision FROM version_metrics
WHERE resource_name = {name:String} AND resource_version = {version:String}
  AND window_start = fromUnixTimestamp64Micro({start:Int64}, 'UTC') AND source_partition = {partition:Int32}
"""


class MetricsRecount:
    """Rebuild a metrics partial the worker does not hold from what ClickHouse stored.

    A partial is absent from the worker's table when its window is new, or when the table was lost.
    In the second case ClickHouse holds the rollouts the lost partial counted: they are counted again
    with :func:`.metrics.add_outcome` (the newest state of each, so its late rewards are in), their ids
    are kept in the partial so that a re-delivered end of one of them is not counted twice, and the
    revision starts above the stored partial's, which the recount supersedes.

    Args:
        connect: opens a clickhouse-connect client (lazily, again after a failure).
        window_seconds: the metrics window.
    """

    def __init__(self, connect: Callable[[], Any], window_seconds: float) -> None:
        self._reader = _Reader(connect)
        self._window_seconds = window_seconds
        self.recounts = 0

    def partial(self, key: str) -> dict[str, Any] | None:
        """The recounted partial of ``key`` (see :func:`.metrics.partial_key`); ``None`` when nothing
        was stored for it (a new window) or ClickHouse cannot be asked."""
        name, version, start, partition = version_metrics.parse_key(key)
        _, end = version_metrics.window_of(start, self._window_seconds)
        what = f"the metrics partial {name}/{version}@{start}/p{partition}"
        stored = self._reader.rows(
            _STORED_REVISION,
            {"name": name, "version": version, "start": start, "partition": partition},
            what,
        )
        if not stored or not stored[0]["revision"]:
            return None
        rows = self._reader.rows(_ENDED_STATES, {"partition": partition, "start": start, "end": end}, what)
        if rows is None:
            return None
        partial = version_metrics.empty_partial(end)
        counted = []
        for row in rows:
            state = _ended_state(row)
            ended = state.ended_at
            if ended is None or not start <= ended < end:
                continue  # its newest state ended elsewhere (or not at all)
            if (name, version) in version_metrics.rollout_versions(state):
                version_metrics.add_outcome(partial, state)
                counted.append(state.rollout_id)
        partial["revision"] = int(stored[0]["revision"]) + 1
        partial[version_metrics.RECOUNTED] = counted
        self.recounts += 1
        logger.info("Worker: %s recounted from ClickHouse: %d rollouts", what, len(counted))
        return partial

    def close(self) -> None:
        self._reader.close()


def _ended_state(row: dict[str, Any]) -> RolloutState:
    attempts = []
    if row["attempt_count"]:
        attempts.append(
            AttemptState(
                attempt_number=row["attempt_count"],
                status="succeeded" if row["status"] == RolloutStatus.SUCCEEDED else "failed",
                started_at=row["attempt_started_at"],
                ended_at=row["attempt_ended_at"],
                resources=dict(row["attempt_resources"]),
            )
        )
    return RolloutState(
        rollout_id=row["rollout_id"],
        status=row["status"],
        resources=dict(row["resources"]),
        attempts=attempts,
        created_at=row["created_at"],
        updated_at=row["ended_at"],
        ended_at=row["ended_at"],
        reward_count=row["reward_count"],
        reward_sum=row["reward_sum"],
        reward_sum_squares=row["reward_sum_squares"],
        llm_calls=row["llm_calls"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
    )
