-- Event tables fed by the ClickHouse sink, one per topic.
--
-- Columns named like the Avro fields are inserted verbatim (ClickHouse decodes the Avro itself);
-- MATERIALIZED columns derive the canonical OTel GenAI fields at insert time. Map keys are plain
-- String: LowCardinality keys cost ~10% more insert CPU, and the hot keys have columns of their own.
-- Inserted parts stay compact (one file) up to 256 MB: a streaming sink inserts every fraction of a
-- second, and a wide part's file per column made small inserts ~50% dearer; merges make them wide.
-- _topic_id/_partition/_offset record where each row came from: the kafka_offsets projection
-- (written atomically with every part) tells a restarted sink where to resume, so a batch is
-- never inserted twice. Sort and partition keys use immutable columns only.

CREATE TABLE IF NOT EXISTS spans
(
    trace_id            String,
    span_id             String,
    parent_span_id      Nullable(String),
    rollout_id          String,
    attempt_id          String,
    sequence_id         Int64,
    name                LowCardinality(String),
    kind                LowCardinality(String),
    start_time          DateTime64(6, 'UTC'),
    end_time            DateTime64(6, 'UTC'),
    status              LowCardinality(String),
    error               Nullable(String),
    attributes          Map(String, String) CODEC(ZSTD(1)),
    int_attributes      Map(String, Int64),
    float_attributes    Map(String, Float64),
    bool_attributes     Map(String, Bool),
    array_attributes    Map(String, Array(String)),
    events              Array(Tuple(name String, time DateTime64(6, 'UTC'), attributes Map(String, String))),
    resource_attributes Map(String, String),
    resource_name       LowCardinality(String),
    resource_version    LowCardinality(String),
    prompt_token_ids    Array(UInt32),
    response_token_ids  Array(UInt32),

    duration_ms         Float64 MATERIALIZED dateDiff('microsecond', start_time, end_time) / 1000,
    operation_name      LowCardinality(String) MATERIALIZED attributes['gen_ai.operation.name'],
    provider            LowCardinality(String) MATERIALIZED attributes['gen_ai.provider.name'],
    request_model       LowCardinality(String) MATERIALIZED attributes['gen_ai.request.model'],
    response_model      LowCardinality(String) MATERIALIZED attributes['gen_ai.response.model'],
    response_id         String MATERIALIZED attributes['gen_ai.response.id'],
    input_tokens        UInt32 MATERIALIZED toUInt32(greatest(int_attributes['gen_ai.usage.input_tokens'], 0)),
    output_tokens       UInt32 MATERIALIZED toUInt32(greatest(int_attributes['gen_ai.usage.output_tokens'], 0)),
    finish_reasons      Array(LowCardinality(String)) MATERIALIZED array_attributes['gen_ai.response.finish_reasons'],
    tool_name           LowCardinality(String) MATERIALIZED attributes['gen_ai.tool.name'],
    service_name        LowCardinality(String) MATERIALIZED resource_attributes['service.name'],

    _topic_id           LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    ingested_at         DateTime64(6, 'UTC') DEFAULT now64(6),

    INDEX idx_rollout rollout_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_trace trace_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span span_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_response response_id TYPE bloom_filter(0.01) GRANULARITY 1,
    PROJECTION kafka_offsets (SELECT _topic_id, _partition, max(_offset) GROUP BY _topic_id, _partition)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(start_time)
ORDER BY (toStartOfHour(start_time), kind, rollout_id, span_id)
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild',
         min_bytes_for_wide_part = 268435456;

CREATE TABLE IF NOT EXISTS rewards
(
    reward_id       String,
    rollout_id      String,
    attempt_id      String,
    span_id         Nullable(String),
    response_id     Nullable(String),
    trace_id        Nullable(String),
    parent_span_id  Nullable(String),
    sequence_id     Int64,
    name            LowCardinality(String),
    value           Float64,
    feedback        Nullable(String),
    source          LowCardinality(String),
    timestamp       DateTime64(6, 'UTC'),
    attributes      Map(String, String),

    _topic_id       LowCardinality(String),
    _partition      UInt32,
    _offset         UInt64,
    ingested_at     DateTime64(6, 'UTC') DEFAULT now64(6),

    INDEX idx_rollout rollout_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_reward reward_id TYPE bloom_filter(0.01) GRANULARITY 1,
    PROJECTION kafka_offsets (SELECT _topic_id, _partition, max(_offset) GROUP BY _topic_id, _partition)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (name, toStartOfHour(timestamp), rollout_id, reward_id)
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild',
         min_bytes_for_wide_part = 268435456;

CREATE TABLE IF NOT EXISTS rollout_events
(
    event_id        String,
    rollout_id      String,
    attempt_id      String,
    attempt_number  Int32,
    type            LowCardinality(String),
    status          LowCardinality(String),
    error           Nullable(String),
    worker_id       LowCardinality(String),
    timestamp       DateTime64(6, 'UTC'),
    task            Nullable(String),
    resources       Map(String, String),
    metadata        Map(String, String),

    _topic_id       LowCardinality(String),
    _partition      UInt32,
    _offset         UInt64,
    ingested_at     DateTime64(6, 'UTC') DEFAULT now64(6),

    INDEX idx_rollout rollout_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_event event_id TYPE bloom_filter(0.01) GRANULARITY 1,
    PROJECTION kafka_offsets (SELECT _topic_id, _partition, max(_offset) GROUP BY _topic_id, _partition)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (toStartOfHour(timestamp), rollout_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild',
         min_bytes_for_wide_part = 268435456;

-- Triplets are re-emitted with a higher version when a late reward changes them: the newest wins.
CREATE TABLE IF NOT EXISTS triplets
(
    triplet_id          String,
    version             Int32,
    rollout_id          String,
    attempt_id          String,
    span_id             String,
    step                Int32,
    prompt_messages     String CODEC(ZSTD(3)),
    prompt_token_ids    Array(UInt32) CODEC(ZSTD(1)),
    response            String CODEC(ZSTD(3)),
    response_token_ids  Array(UInt32) CODEC(ZSTD(1)),
    reward              Nullable(Float64),
    feedback            Nullable(String),
    credit_assignment   LowCardinality(String),
    resource_name       LowCardinality(String),
    resource_version    LowCardinality(String),
    task_type           LowCardinality(String),
    model               LowCardinality(String),
    created_at          DateTime64(6, 'UTC'),
    emitted_at          DateTime64(6, 'UTC'),

    _topic_id           LowCardinality(String),
    _partition          UInt32,
    _offset             UInt64,
    ingested_at         DateTime64(6, 'UTC') DEFAULT now64(6),

    INDEX idx_rollout rollout_id TYPE bloom_filter(0.01) GRANULARITY 1,
    PROJECTION kafka_offsets (SELECT _topic_id, _partition, max(_offset) GROUP BY _topic_id, _partition)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(created_at)
ORDER BY (resource_name, resource_version, toDate(created_at), triplet_id)
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild',
         min_bytes_for_wide_part = 268435456;

-- Records no consumer could process, with the reason; the raw value is kept for replay.
CREATE TABLE IF NOT EXISTS dead_letters
(
    source_topic     LowCardinality(String),
    source_partition Int32,
    source_offset    Int64,
    consumer         LowCardinality(String),
    error_class      LowCardinality(String),
    reason           String,
    key              Nullable(String),
    value            String CODEC(ZSTD(3)),
    headers          Map(String, String),
    failed_at        DateTime64(6, 'UTC'),

    _topic_id        LowCardinality(String),
    _partition       UInt32,
    _offset          UInt64,
    ingested_at      DateTime64(6, 'UTC') DEFAULT now64(6),

    PROJECTION kafka_offsets (SELECT _topic_id, _partition, max(_offset) GROUP BY _topic_id, _partition)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(failed_at)
ORDER BY (source_topic, source_partition, source_offset, failed_at)
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild',
         min_bytes_for_wide_part = 268435456;
