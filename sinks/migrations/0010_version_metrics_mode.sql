-- Honest A/B (issue 16): per-version metrics count by rollout mode, so that pinned evaluation
-- rollouts (modes `val`, `test`) can be told apart from traffic (`train`, `prod`); the promotion
-- controller counts traffic only. The mode is part of a partial's identity, hence of the
-- ReplacingMergeTree's sorting key: a new column can join the end of the sorting key in the ALTER
-- that adds it (with no DEFAULT expression: its type's default is ''). Partials stored before
-- have mode '' (every mode together). Re-runnable: a second run finds the column and the same key.

ALTER TABLE version_metrics
    ADD COLUMN IF NOT EXISTS mode LowCardinality(String) AFTER source_partition,
    MODIFY ORDER BY (resource_name, resource_version, window_start, source_partition, mode);

-- One row per resource version, mode and window: the partials summed (FINAL keeps the highest
-- revision of each partial). Sum over modes for all rollouts; filter `mode IN ('train', 'prod')`
-- for A/B traffic.
CREATE OR REPLACE VIEW version_metrics_by_window AS
SELECT
    resource_name,
    resource_version,
    mode,
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
    n_output_tokens AS output_tokens,
    s_reward AS reward_sum,
    s_latency AS latency_ms_sum
FROM
(
    SELECT
        resource_name,
        resource_version,
        mode,
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
    GROUP BY resource_name, resource_version, mode, window_start
);
