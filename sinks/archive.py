"""What the sink stored, read back for the stream workers (:class:`agentstream.streams.archive.Archive`).

A stream worker keeps its tables in Kafka changelogs. When the broker loses its log (the embedded
broker keeps it in memory only) they are gone, but this sink had already landed the records in
ClickHouse. The worker's composition (``agentstream worker``) hands it a :class:`ClickHouseArchive`:
the queries about our tables live here, beside the migrations that define them, and the workers
never talk to ClickHouse themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentstream.clickhouse.connect import chdb_path_of, connect
from agentstream.clickhouse.gateway import GatewayState
from agentstream.schemas import AttemptState, RolloutState, RolloutStatus
from agentstream.settings import Settings

#: an LLM call's span with the fields a decoded span record has (see streams/calls.py)
_LLM_SPANS = """
SELECT span_id, parent_span_id, attempt_id, sequence_id, bool_attributes,
       toUnixTimestamp64Micro(start_time) AS start_time, toUnixTimestamp64Micro(end_time) AS end_time,
       attributes, prompt_token_ids, response_token_ids, response_logprobs, resource_name, resource_version
FROM spans FINAL
WHERE rollout_id = {rollout_id:String} AND kind = 'llm'
ORDER BY start_time, span_id
"""

#: the highest stored version of each of a rollout's triplets
_TRIPLET_VERSIONS = """
SELECT triplet_id, max(version) AS version FROM triplets
WHERE rollout_id = {rollout_id:String}
GROUP BY triplet_id
"""

#: the newest stored state of each rollout of a source partition that ended in a window
_ENDED_STATES = """
SELECT rollout_id, status, mode, resources, reward_count, reward_sum, reward_sum_squares, llm_calls,
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


#: the longest a worker waits for one read-back (it waits in its event loop)
QUERY_SECONDS = 3


def query_client(settings: Settings) -> Any:
    """A read-only ClickHouse client that never opens a chDB directory itself (a worker that did
    would lock the sink out of it): without a sink serving queries this raises."""
    path = chdb_path_of(settings.default_clickhouse_dsn)
    if path is not None and GatewayState.load(path) is None:
        raise RuntimeError("no sink serves queries for this chDB directory")
    # A worker waits for the answer in its event loop: a query may take a few seconds, never more.
    return connect(settings, gateway_wait=0.0, send_receive_timeout=QUERY_SECONDS)


class ClickHouseArchive:
    """The stored spans, rollout states and metric partials, by the queries the workers need.

    A client is opened on first use and dropped after a failure (the next call opens another);
    every method raises when ClickHouse cannot be asked.

    Args:
        connect: opens a clickhouse-connect client; :meth:`for_settings` gives the usual one.
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._client: Any = None

    @classmethod
    def for_settings(cls, settings: Settings) -> ClickHouseArchive:
        return cls(lambda: query_client(settings))

    def _rows(self, query: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            if self._client is None:
                self._client = self._connect()
            result = self._client.query(
                query, parameters=parameters, settings={"max_execution_time": QUERY_SECONDS}
            )
            return list(result.named_results())
        except Exception:
            self._client = None
            raise

    def llm_spans(self, rollout_id: str) -> list[dict[str, Any]]:
        """The rollout's LLM-call spans, as dicts with the fields of a decoded span record."""
        spans = []
        for row in self._rows(_LLM_SPANS, {"rollout_id": rollout_id}):
            spans.append(
                {
                    **row,
                    "rollout_id": rollout_id,
                    "start_time": int(row["start_time"]),
                    "end_time": int(row["end_time"]),
                    "attributes": dict(row["attributes"]),
                    "prompt_token_ids": list(row["prompt_token_ids"]),
                    "response_token_ids": list(row["response_token_ids"]),
                    "response_logprobs": [float(x) for x in row["response_logprobs"]],
                }
            )
        return spans

    def triplet_versions(self, rollout_id: str) -> dict[str, int]:
        """The highest stored version of each of the rollout's triplets, by triplet id."""
        rows = self._rows(_TRIPLET_VERSIONS, {"rollout_id": rollout_id})
        return {row["triplet_id"]: int(row["version"]) for row in rows}

    def stored_revision(self, name: str, version: str, window_start_us: int, partition: int) -> int:
        """The highest stored revision of a metrics partial; 0 when none is stored."""
        parameters = {"name": name, "version": version, "start": window_start_us, "partition": partition}
        rows = self._rows(_STORED_REVISION, parameters)
        return int(rows[0]["revision"] or 0) if rows else 0

    def ended_states(self, partition: int, start_us: int, end_us: int) -> list[RolloutState]:
        """The newest stored state of each rollout of ``partition`` whose state ended in the window
        (enough of it for the metrics: status, resources, the last attempt's times, the counters)."""
        rows = self._rows(_ENDED_STATES, {"partition": partition, "start": start_us, "end": end_us})
        return [_ended_state(row) for row in rows]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


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
        mode=row["mode"],
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
