-- Analytics (issue 5): the views analysts, `agentstream report` and the dashboard read.
--
-- Every view reads the deduplicated current rows (FINAL on the ReplacingMergeTree tables), so a
-- record the sink receives twice (producer retry, replay after an outage) counts once, and late
-- rewards or state changes show up on the next query. They are plain views, not refreshable ones:
-- chDB's default database (engine Overlay) cannot hold refreshable materialized views. On a real
-- server, `version_summary` can be snapshotted with
--   CREATE MATERIALIZED VIEW version_summary_mv REFRESH EVERY 1 MINUTE ENGINE = MergeTree
--   ORDER BY (resource_name, resource_version) AS SELECT * FROM version_summary
-- (see docs/analytics.md).

-- Prices per million tokens, by model name as sent in the request (`gen_ai.request.model`).
-- Models without a row cost 0 (a local model). The newest row of a model wins.
CREATE TABLE IF NOT EXISTS model_prices
(
    model                   String,
    input_per_million       Float64,
    output_per_million      Float64,
    currency                LowCardinality(String) DEFAULT 'USD',
    updated_at              DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY model;

-- One row per rollout: its newest state (by version: the table's sort key holds created_at, which
-- an early state may carry differently, so FINAL alone does not collapse them). latency_ms runs from the first attempt's start (else
-- the rollout's creation) to its end; queueing before the first attempt is queue_ms.
CREATE VIEW IF NOT EXISTS rollouts AS
SELECT
    rollout_id,
    status,
    task_type,
    mode,
    resources,
    input,
    created_at,
    updated_at,
    ended_at,
    error,
    length(attempts) AS attempt_count,
    if(length(attempts) > 0, tupleElement(attempts[-1], 'status'), '') AS last_attempt_status,
    reward_count,
    reward_sum,
    if(reward_count > 0, reward_sum / reward_count, NULL) AS reward_mean,
    last_reward,
    llm_calls,
    input_tokens,
    output_tokens,
    if(length(attempts) > 0, tupleElement(attempts[1], 'started_at'), NULL) AS started_at,
    if(ended_at IS NULL, NULL,
       dateDiff('microsecond', coalesce(started_at, created_at), assumeNotNull(ended_at)) / 1000) AS latency_ms,
    if(started_at IS NULL, NULL, dateDiff('microsecond', created_at, assumeNotNull(started_at)) / 1000) AS queue_ms
FROM rollout_states
ORDER BY rollout_id, version DESC
LIMIT 1 BY rollout_id;

-- One row per attempt of every rollout.
CREATE VIEW IF NOT EXISTS attempts AS
SELECT
    rollout_id,
    tupleElement(a, 'attempt_id') AS attempt_id,
    tupleElement(a, 'attempt_number') AS attempt_number,
    tupleElement(a, 'status') AS status,
    tupleElement(a, 'worker_id') AS worker_id,
    tupleElement(a, 'started_at') AS started_at,
    tupleElement(a, 'ended_at') AS ended_at,
    tupleElement(a, 'last_heartbeat') AS last_heartbeat,
    tupleElement(a, 'error') AS error,
    if(tupleElement(a, 'started_at') IS NULL OR tupleElement(a, 'ended_at') IS NULL, NULL,
       dateDiff('microsecond', assumeNotNull(tupleElement(a, 'started_at')),
                assumeNotNull(tupleElement(a, 'ended_at'))) / 1000) AS duration_ms,
    if(empty(tupleElement(a, 'resources')), resources, tupleElement(a, 'resources')) AS resources,
    task_type,
    mode
FROM
(
    SELECT rollout_id, attempts, resources, task_type, mode
    FROM rollout_states
    ORDER BY rollout_id, version DESC
    LIMIT 1 BY rollout_id
)
ARRAY JOIN attempts AS a;

-- Rollouts handed to a human: a reward or a span carrying the attribute `agentstream.handoff`
-- (its value says to whom). A business event may report it long after the rollout ended.
CREATE VIEW IF NOT EXISTS handoffs AS
SELECT rollout_id, min(at) AS handed_off_at, any(target) AS handed_to, any(reason) AS reason
FROM
(
    SELECT rollout_id, timestamp AS at, attributes['agentstream.handoff'] AS target,
           coalesce(feedback, '') AS reason
    FROM rewards FINAL
    WHERE mapContains(attributes, 'agentstream.handoff')
    UNION ALL
    SELECT rollout_id, start_time AS at, attributes['agentstream.handoff'] AS target, coalesce(error, name) AS reason
    FROM spans FINAL
    WHERE mapContains(attributes, 'agentstream.handoff')
)
GROUP BY rollout_id;

-- Cost of every LLM call: its tokens at its model's price.
CREATE VIEW IF NOT EXISTS llm_call_costs AS
SELECT
    s.rollout_id AS rollout_id,
    s.attempt_id AS attempt_id,
    s.span_id AS span_id,
    s.start_time AS start_time,
    s.request_model AS model,
    s.resource_name AS resource_name,
    s.resource_version AS resource_version,
    s.input_tokens AS input_tokens,
    s.output_tokens AS output_tokens,
    s.duration_ms AS duration_ms,
    (s.input_tokens * p.input_per_million + s.output_tokens * p.output_per_million) / 1e6 AS cost
FROM (SELECT rollout_id, attempt_id, span_id, start_time, request_model, resource_name, resource_version,
             input_tokens, output_tokens, duration_ms
      FROM spans FINAL WHERE kind = 'llm') AS s
LEFT JOIN (SELECT model, input_per_million, output_per_million FROM model_prices FINAL) AS p
    ON p.model = s.request_model;

-- Per rollout: what its spans say about why it failed.
CREATE VIEW IF NOT EXISTS rollout_span_summary AS
SELECT
    rollout_id,
    count() AS spans,
    countIf(kind = 'tool' AND status = 'error') AS tool_errors,
    countIf(kind = 'llm' AND status = 'error') AS llm_errors,
    argMinIf(coalesce(error, ''), start_time, status = 'error') AS first_error,
    argMinIf(attributes['error.type'], start_time, status = 'error') AS first_error_type,
    groupUniqArrayIf((resource_name, resource_version), kind = 'llm' AND resource_name != '') AS llm_resources
FROM spans FINAL
GROUP BY rollout_id;

-- One row per rollout and resource version it ran with (a rollout without resources has one row
-- with empty names), with its outcome, cost, handoff and failure cause.
-- failure_cause, first match wins:
--   timeout       the last attempt timed out or stopped heartbeating
--   tool_error    a tool call failed
--   parse_error   the output could not be parsed (parse/JSON/validation errors)
--   llm_error     an LLM call failed
--   prompt_drift  an LLM call used another version of the resource than the rollout was given
--   task_failed   the agent reported failure (wrong answer, rejected output)
CREATE VIEW IF NOT EXISTS rollout_outcomes AS
SELECT
    r.rollout_id AS rollout_id,
    r.resource_name AS resource_name,
    r.resource_version AS resource_version,
    r.status AS status,
    r.task_type AS task_type,
    r.mode AS mode,
    r.created_at AS created_at,
    r.ended_at AS ended_at,
    r.error AS error,
    r.attempt_count AS attempt_count,
    r.reward_count AS reward_count,
    r.reward_sum AS reward_sum,
    r.reward_mean AS reward_mean,
    r.last_reward AS last_reward,
    r.latency_ms AS latency_ms,
    r.llm_calls AS llm_calls,
    r.input_tokens AS input_tokens,
    r.output_tokens AS output_tokens,
    coalesce(c.cost, 0) AS cost,
    h.rollout_id != '' AS handed_off,
    multiIf(
        r.status NOT IN ('failed', 'cancelled'), '',
        r.last_attempt_status IN ('timeout', 'unresponsive'), 'timeout',
        coalesce(e.tool_errors, 0) > 0, 'tool_error',
        match(concat(coalesce(r.error, ''), ' ', coalesce(e.first_error, ''), ' ', coalesce(e.first_error_type, '')),
              '(?i)pars|json|decode|validation|invalid (output|format|call)'), 'parse_error',
        coalesce(e.llm_errors, 0) > 0, 'llm_error',
        arrayExists(x -> x.1 = r.resource_name AND x.2 != r.resource_version, e.llm_resources), 'prompt_drift',
        r.status = 'cancelled', 'cancelled',
        'task_failed') AS failure_cause
FROM
(
    SELECT *, name AS resource_name, version AS resource_version
    FROM rollouts
    LEFT ARRAY JOIN mapKeys(resources) AS name, mapValues(resources) AS version
) AS r
LEFT JOIN (SELECT rollout_id, sum(cost) AS cost FROM llm_call_costs GROUP BY rollout_id) AS c
    ON c.rollout_id = r.rollout_id
LEFT JOIN handoffs AS h ON h.rollout_id = r.rollout_id
LEFT JOIN rollout_span_summary AS e ON e.rollout_id = r.rollout_id;

-- Per resource version, over all time (filter rollout_outcomes for a time range).
CREATE VIEW IF NOT EXISTS version_summary AS
SELECT
    resource_name,
    resource_version,
    count() AS rollouts,
    countIf(status = 'succeeded') AS succeeded,
    countIf(status = 'failed') AS failed,
    if(succeeded + failed > 0, succeeded / (succeeded + failed), NULL) AS success_rate,
    if(sum(reward_count) > 0, sum(reward_sum) / sum(reward_count), NULL) AS reward_mean,
    countIf(handed_off) / count() AS handoff_rate,
    quantileExactIf(0.5)(latency_ms, latency_ms IS NOT NULL) AS latency_p50_ms,
    quantileExactIf(0.95)(latency_ms, latency_ms IS NOT NULL) AS latency_p95_ms,
    quantileExactIf(0.99)(latency_ms, latency_ms IS NOT NULL) AS latency_p99_ms,
    sum(llm_calls) AS llm_calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost) AS cost,
    min(created_at) AS first_seen,
    max(created_at) AS last_seen
FROM rollout_outcomes
GROUP BY resource_name, resource_version;
