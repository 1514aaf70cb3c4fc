-- Token log-probabilities of LLM responses (issue 6): the span's response_logprobs, carried into
-- triplets, one per response token, as the serving engine reported them. RL trainers use them as
-- the sampling policy's log-probabilities (importance sampling, staleness checks).

ALTER TABLE spans ADD COLUMN IF NOT EXISTS response_logprobs Array(Float32) CODEC(ZSTD(1)) AFTER response_token_ids;
ALTER TABLE triplets ADD COLUMN IF NOT EXISTS response_logprobs Array(Float32) CODEC(ZSTD(1)) AFTER response_token_ids;
