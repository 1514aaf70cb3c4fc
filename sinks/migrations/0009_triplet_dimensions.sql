-- Triplet fidelity (issue 14): rewards are credited per dimension (reward name) and kept by name,
-- and a triplet version can withdraw its triplet (its LLM call turned out a judge call or a
-- duplicate capture, or lost its credit). `reward` stays the primary dimension's credited value
-- (streams/credit.py says which dimension that is). A retracted triplet is never training data:
-- queries of training data filter `NOT retracted` on the newest version of each triplet id.
-- Triplets stored before this have no dimensions and are not retracted.

ALTER TABLE triplets ADD COLUMN IF NOT EXISTS reward_dimensions Map(String, Float64) CODEC(ZSTD(1)) AFTER reward;
ALTER TABLE triplets ADD COLUMN IF NOT EXISTS retracted Bool DEFAULT false AFTER reward_dimensions;
