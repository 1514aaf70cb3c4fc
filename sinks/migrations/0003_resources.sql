-- Resources (issue 4): immutable versions, label moves (their history) and promotion decisions.

-- Triplets say which split their rollout ran on (trainers must not learn from val/test).
ALTER TABLE triplets ADD COLUMN IF NOT EXISTS mode LowCardinality(String) DEFAULT '' AFTER resource_version;

CREATE TABLE IF NOT EXISTS resource_versions
(
    resource_name       LowCardinality(String),
    version             Int32,
    kind                LowCardinality(String),
    template            Nullable(String) CODEC(ZSTD(3)),
    variables           Array(String),
    uri                 Nullable(String),
    config              Map(String, String),
    parent_version      Nullable(Int32),
    lineage             Map(String, String),
    content_hash        String,
    created_at          DateTime64(6, 'UTC'),
    created_by          String,

    _topic_id           LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    ingested_at         DateTime64(6, 'UTC') DEFAULT now64(6),

    PROJECTION kafka_offsets (SELECT _topic_id, _partition, max(_offset) GROUP BY _topic_id, _partition)
)
ENGINE = ReplacingMergeTree
ORDER BY (resource_name, version)
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild';

-- Every move of every label: the label's history (the topic is compacted to the current position).
CREATE TABLE IF NOT EXISTS resource_labels
(
    resource_name       LowCardinality(String),
    label               LowCardinality(String),
    version             Nullable(Int32),
    previous_version    Nullable(Int32),
    reason              String,
    decision_id         Nullable(String),
    moved_at            DateTime64(6, 'UTC'),
    moved_by            String,

    _topic_id           LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    ingested_at         DateTime64(6, 'UTC') DEFAULT now64(6),

    PROJECTION kafka_offsets (SELECT _topic_id, _partition, max(_offset) GROUP BY _topic_id, _partition)
)
ENGINE = ReplacingMergeTree
ORDER BY (resource_name, label, moved_at, _offset)
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild';

CREATE TABLE IF NOT EXISTS promotion_decisions
(
    decision_id             String,
    resource_name           LowCardinality(String),
    action                  LowCardinality(String),
    candidate_version       Int32,
    production_version      Int32,
    metric                  LowCardinality(String),
    test                    String,
    candidate_n             Int64,
    candidate_successes     Int64,
    production_n            Int64,
    production_successes    Int64,
    difference              Nullable(Float64),
    statistic               Nullable(Float64),
    p_value                 Nullable(Float64),
    margin                  Float64,
    alpha                   Float64,
    min_samples             Int64,
    evidence_since          DateTime64(6, 'UTC'),
    reason                  String,
    decided_at              DateTime64(6, 'UTC'),

    _topic_id               LowCardinality(String),
    _partition              UInt32,
    _offset                 UInt64,
    ingested_at             DateTime64(6, 'UTC') DEFAULT now64(6),

    PROJECTION kafka_offsets (SELECT _topic_id, _partition, max(_offset) GROUP BY _topic_id, _partition)
)
ENGINE = ReplacingMergeTree
ORDER BY (resource_name, decided_at, decision_id)
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild';
