-- Rollout lifecycle (issue 3): new RolloutEvent fields, rollout states, per-version metrics.

ALTER TABLE rollout_events ADD COLUMN IF NOT EXISTS task_type LowCardinality(String) DEFAULT '';
ALTER TABLE rollout_events ADD COLUMN IF NOT EXISTS mode LowCardinality(String) DEFAULT '';
ALTER TABLE rollout_events ADD COLUMN IF NOT EXISTS started_at Nullable(DateTime64(6, 'UTC'));
ALTER TABLE rollout_events ADD COLUMN IF NOT EXISTS llm_calls Int32 DEFAULT 0;
ALTER TABLE rollout_events ADD COLUMN IF NOT EXISTS input_tokens Int64 DEFAULT 0;
ALTER TABLE rollout_events ADD COLUMN IF NOT EXISTS output_tokens Int64 DEFAULT 0;

-- The compacted rollout-state topic: every version of every rollout's state; the highest wins.
CREATE TABLE IF NOT EXISTS rollout_states
(
    rollout_id          String,
    status              LowCardinality(String),
    version             Int64,
    input               String CODEC(ZSTD(3)),
    task_type           LowCardinality(String),
    mode                LowCardinality(String),
    resources           Map(String, String),
    attempts            Array(Tuple(
                            attempt_number Int32,
                            attempt_id String,
                            status String,
                            worker_id String,
                            started_at Nullable(DateTime64(6, 'UTC')),
                            ended_at Nullable(DateTime64(6, 'UTC')),
                            last_heartbeat Nullable(DateTime64(6, 'UTC')),
                            error Nullable(String),
                            resources Map(String, String))),
    created_at          DateTime64(6, 'UTC'),
    updated_at          DateTime64(6, 'UTC'),
    ended_at            Nullable(DateTime64(6, 'UTC')),
    error               Nullable(String),
    reward_count        Int32,
    reward_sum          Float64,
    last_reward         Nullable(Float64),
    llm_calls           Int32,
    input_tokens        Int64,
    output_tokens       Int64,

    _topic_id           LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    ingested_at         DateTime64(6, 'UTC') DEFAULT now64(6),

    PROJECTION kafka_offsets (SELECT _topic_id, _partition, max(_offset) GROUP BY _topic_id, _partition)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(created_at)
ORDER BY (rollout_id, created_at)
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild',
         min_bytes_for_wide_part = 268435456;

-- Partials per (version, window, source partition); the highest revision of each is current.
CREATE TABLE IF NOT EXISTS version_metrics
(
    resource_name           LowCardinality(String),
    resource_version        LowCardinality(String),
    window_start            DateTime64(6, 'UTC'),
    window_end              DateTime64(6, 'UTC'),
    source_partition        Int32,
    revision                Int64,
    rollouts                Int64,
    succeeded               Int64,
    failed                  Int64,
    rewards                 Int64,
    reward_sum              Float64,
    reward_sum_squares      Float64,
    latency_ms_sum          Float64,
    latency_ms_max          Float64,
    latency_ms_histogram    Array(Int64),
    llm_calls               Int64,
    input_tokens            Int64,
    output_tokens           Int64,
    emitted_at              DateTime64(6, 'UTC'),

    _topic_id               LowCardinality(String),
    _partition              UInt32,
    _offset                 UInt64,
    ingested_at             DateTime64(6, 'UTC') DEFAULT now64(6),

    PROJECTION kafka_offsets (SELECT _topic_id, _partition, max(_offset) GROUP BY _topic_id, _partition)
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(window_start)
ORDER BY (resource_name, resource_version, window_start, source_partition)
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild';

-- One row per resource version and window: the partials summed (safe under redelivery: FINAL keeps
-- the highest revision of each partial).
CREATE VIEW IF NOT EXISTS version_metrics_by_window AS
SELECT
    resource_name,
    resource_version,
    window_start,
    window_end,
    n_rollouts AS rollouts,
    n_succeeded AS succeeded,
    n_failed AS failed,
    if(n_rollouts > 0, n_succeeded / n_rollouts, NULL) AS success_rate,
    n_rewards AS rewards,
    if(n_rewards > 0, s_reward / n_rewards, NULL) AS reward_mean,
    if(n_rollouts > 0, s_latency / n_rollouts, NULL) AS latency_ms_mean,
    m_latency AS latency_ms_max,
    histogram AS latency_ms_histogram,
    n_llm_calls AS llm_calls,
    n_input_tokens AS input_tokens,
    n_output_tokens AS output_tokens
FROM
(
    SELECT
        resource_name,
        resource_version,
        window_start,
        any(window_end) AS window_end,
        sum(rollouts) AS n_rollouts,
        sum(succeeded) AS n_succeeded,
        sum(failed) AS n_failed,
        sum(rewards) AS n_rewards,
        sum(reward_sum) AS s_reward,
        sum(latency_ms_sum) AS s_latency,
        max(latency_ms_max) AS m_latency,
        sumForEach(latency_ms_histogram) AS histogram,
        sum(llm_calls) AS n_llm_calls,
        sum(input_tokens) AS n_input_tokens,
        sum(output_tokens) AS n_output_tokens
    FROM version_metrics FINAL
    GROUP BY resource_name, resource_version, window_start
);
