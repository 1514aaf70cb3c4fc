-- Rollout states keep the sum of squared rewards (issue 13): a stream worker that lost its tables
-- with the broker's log recounts per-version metrics from the stored states (streams/archive.py),
-- and the reward variance needs it. States stored before this have 0 there.

ALTER TABLE rollout_states ADD COLUMN IF NOT EXISTS reward_sum_squares Float64 DEFAULT 0 AFTER reward_sum;
