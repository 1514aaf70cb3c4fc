-- Dead letters re-driven by `agentstream dead-letters replay` (producers/dead_letter_replay.py): one
-- row per dead-letter record sent back to its source topic, written once Kafka took it. The command
-- reads it to never send a dead letter twice; the dashboard's dead-letter page shows it.
-- A dead letter is identified by its own coordinates on the dead-letter topic (dead_letters._topic_id,
-- _partition, _offset).

CREATE TABLE IF NOT EXISTS dead_letter_replays
(
    dead_letter_topic_id  LowCardinality(String),
    dead_letter_partition UInt32,
    dead_letter_offset    UInt64,
    source_topic          LowCardinality(String),
    source_partition      Int32,
    source_offset         Int64,
    replayed_partition    Int32,
    replayed_offset       Int64,
    replayed_at           DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (dead_letter_topic_id, dead_letter_partition, dead_letter_offset, replayed_at);
