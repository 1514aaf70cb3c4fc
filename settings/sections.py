"""The groups of :class:`agentstream.settings.Settings` (``sdk``, ``sink``, ``streams``, ...), one
model each; set from the environment as ``AGENTSTREAM_<GROUP>__<FIELD>``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from agentstream.process.secrets import secret_path
from agentstream.schemas.version_metrics import TRAFFIC_MODES


class SdkSettings(BaseModel):
    """Agent-side SDK: buffering, spooling and delivery."""

    model_config = ConfigDict(extra="forbid")

    service_name: str = Field("agent", description="OTel service.name stamped on every span.")
    queue_size: int = Field(
        100_000, ge=1, description="Records buffered in memory before spilling to the spool."
    )
    spool_dir: Path | None = Field(None, description="Outage spool; default <data_dir>/spool.")
    max_record_bytes: int = Field(
        900_000, ge=4_096, description="Larger records are truncated (with a marker) to fit Kafka's limit."
    )
    replay_window_seconds: float = Field(
        30.0, ge=0, description="Delivered records kept for re-sending if the broker loses its log."
    )
    replay_window_bytes: int = Field(64 * 1024 * 1024, ge=0)
    linger_ms: int = Field(
        50,
        ge=0,
        description="Batching delay: larger batches cost the broker and the agent less CPU per record.",
    )
    compression: Literal["none", "lz4", "zstd", "gzip", "snappy"] = "lz4"
    delivery_timeout_ms: int = Field(10_000, ge=1_000, description="Per-record Kafka delivery timeout.")
    capture_content: bool = Field(True, description="Record prompt and completion text of LLM calls.")
    # Spool bound and PII redaction: see producers/spool_replay.py and producers/redaction.py.
    spool_max_bytes: int = Field(1024**3, ge=0, description="Spool bound (0: none); full: newest dropped.")
    redact: list[str] = Field(["email", "phone", "card"], description="PII redacted from content; [] off.")
    redact_recognizers: list[str] = Field([], description="More recognisers: 'module:name' import paths.")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Opt-in SDK /metrics; 0: any port.")


class SinkSettings(BaseModel):
    """ClickHouse sink: batching, retries and the query gateway it serves while it owns chDB."""

    model_config = ConfigDict(extra="forbid")

    group_id: str = "agentstream-clickhouse-sink"
    session_timeout_ms: int = Field(
        6_000, ge=1_000, description="Consumer-group session; joins take half of it."
    )
    batch_max_rows: int = Field(50_000, ge=1)
    batch_max_bytes: int = Field(64 * 1024 * 1024, ge=1_024)
    batch_max_seconds: float = Field(0.25, gt=0)
    insert_lanes: int = Field(
        1,
        ge=1,
        le=16,
        description="Inserts running in parallel, each owning a share of the partitions; more helps "
        "with cores to spare (on 2 cores a second lane raised throughput ~5% and freshness p99 1.7x).",
    )
    gap_verify_seconds: float = Field(
        2.0,
        ge=0,
        description="How long a jump over offsets is re-read before it is accepted as a real gap "
        "(transaction markers); 0 accepts gaps at once.",
    )
    lag_check_seconds: float = Field(
        5.0,
        ge=0,
        description="How often each partition's lag is checked; a partition with records waiting that "
        "nothing reads for two checks is logged as stalled and resumed. 0 turns the checks off.",
    )
    retry_initial_seconds: float = Field(0.2, gt=0)
    retry_max_seconds: float = Field(30.0, gt=0)
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(0, ge=0, le=65535, description="0 picks a free port.")
    query_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest a query through the sink's query endpoint may run (max_execution_time); "
        "the client then gets TIMEOUT_EXCEEDED.",
    )
    query_threads: int = Field(
        4, ge=1, le=64, description="Queries the query endpoint runs at once, each on its own connection."
    )
    query_write_role: bool = Field(
        True,
        description="Serve a write role (its own credential) for `agentstream forget`, `migrate` and "
        "dead-letter bookkeeping; False serves reads only.",
    )
    query_token_file: Path | None = Field(
        None, description="Read credential of the query endpoint; default <data_dir>/secrets/query.token."
    )
    query_write_token_file: Path | None = Field(
        None,
        description="Write credential of the query endpoint; default <data_dir>/secrets/query-write.token.",
    )


class StreamSettings(BaseModel):
    """The Faust stream workers (``agentstream worker``): lifecycle, triplet joiner, metrics."""

    model_config = ConfigDict(extra="forbid")

    app_id: str = Field(
        "streams",
        description="Faust app id after the topic prefix: consumer group and table changelog names.",
    )
    workers: int = Field(
        2, ge=0, description="Stream workers `agentstream up` runs; they share the partitions."
    )
    fetch_wait_ms: int = Field(
        50,
        ge=1,
        description="Fetch long-poll wait; Faust hard-codes 1500 ms, which is the live latency floor.",
    )
    producer_linger_ms: int = Field(10, ge=0)
    output_timeout_seconds: float = Field(
        120.0,
        ge=1,
        description=(
            "How long an output record (triplet, task, changelog) may wait for Kafka, and a commit for "
            "its outputs: longer than a leader failover or a broker restart, so the worker waits instead of crashing."
        ),
    )
    session_timeout_ms: int = Field(6_000, ge=1_000, description="Group session; joins take half of it.")
    heartbeat_interval_ms: int = Field(1_000, ge=100)
    commit_interval_seconds: float = Field(1.0, gt=0)
    gap_verify_seconds: float = Field(
        2.0, ge=0, description="How long an offset gap is re-read before it is accepted (compacted topics)."
    )
    timer_interval_seconds: float = Field(
        0.25, gt=0, description="How often attempts are checked for timeouts."
    )
    credit_assignment: dict[str, str] = Field(
        default_factory=dict, description="Credit-assignment strategy per task type (first_occurrence, ...)."
    )
    default_credit_assignment: str = "first_occurrence"
    discount: float = Field(0.9, gt=0, le=1, description="Gamma of the discounted strategy.")
    late_reward_horizon_seconds: float = Field(
        3_600.0, ge=0, description="Rewards this long after a rollout ended still update its triplets."
    )
    call_cache_size: int = Field(
        20_000,
        ge=1,
        description="LLM-call contents the joiner keeps in memory; older ones are re-read from Kafka.",
    )
    emit_uncredited_calls: bool = Field(True, description="Uncredited LLM calls give triplets (reward null).")
    train_on_judge_calls: bool = Field(False, description="Judge calls give triplets too (never credited).")
    metrics_window_seconds: float = Field(60.0, gt=0, description="Tumbling window of per-version metrics.")
    metrics_flush_seconds: float = Field(
        1.0, gt=0, description="How often changed metric windows are emitted."
    )
    web_port: int = Field(0, ge=0, le=65535, description="Faust web UI port; 0 disables it.")


class RunnerSettings(BaseModel):
    """Runners (``agentstream.producers.Runner``): take tasks, run the agent, report outcomes."""

    model_config = ConfigDict(extra="forbid")

    group_id: str = "agentstream-runners"
    concurrency: int = Field(4, ge=1, description="Rollouts one runner runs at once.")
    heartbeat_seconds: float = Field(2.0, gt=0)
    lazy_start_seconds: float = Field(
        0.5, ge=0, description="attempt_started is sent only for attempts running longer than this."
    )
    shutdown_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="On shutdown, in-flight rollouts get this long to finish before they are handed back.",
    )
    session_timeout_ms: int = Field(6_000, ge=1_000)
    traffic: dict[str, float] = Field(
        default_factory=lambda: {"production": 0.9, "candidate": 0.1},
        description="A/B split: share of tasks per label (sticky per task key); missing labels are skipped.",
    )
    resources: list[str] | None = Field(
        None, description="Resources the runner resolves for each attempt; default: every known resource."
    )


class PromotionSettings(BaseModel):
    """The A/B promotion controller (``agentstream promoter``; ``up`` runs one)."""

    model_config = ConfigDict(extra="forbid")

    margin: float = Field(
        0.0, ge=-1, lt=1, description="Candidate must beat production by more than this (rate)."
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Significance level: over the whole experiment for the mSPRT, per look for the z-test.",
    )
    test: Literal["msprt", "z"] = Field(
        "msprt",
        description="msprt: the sequential test, valid however often the controller looks (always-valid "
        "p-value); z: a one-sided z-test whose alpha holds per look only (see streams/promotion_policy.py).",
    )
    tau: float = Field(
        0.2, gt=0, lt=1, description="The mSPRT's mixing spread: the gain (rate) it detects quickest."
    )
    modes: list[str] = Field(
        list(TRAFFIC_MODES),
        min_length=1,
        description="Rollout modes that count as A/B traffic; pinned evaluations (val, test) do not.",
    )
    min_samples: int = Field(30, ge=1, description="Rollouts per arm before any promote or rollback.")
    max_samples: int | None = Field(
        None, ge=1, description="Candidate rollouts after which an undecided test keeps production."
    )
    rollback_margin: float = Field(
        0.0, ge=0, lt=1, description="Roll back when worse by more than this (rate)."
    )
    interval_seconds: float = Field(5.0, gt=0, description="How often candidates are evaluated.")
    hold_every_seconds: float = Field(
        30.0, gt=0, description="A hold with new evidence is recorded at most this often."
    )


class DashboardSettings(BaseModel):
    """The web dashboard (``agentstream dashboard``; ``up`` runs one)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8321, ge=0, le=65535, description="0 picks a free port.")
    token: SecretStr | None = Field(
        None,
        description="The token every page and API route but /healthz and /readyz needs (`Authorization: "
        "Bearer <token>`, or the login form / /?token=<token>, which start a session); unset: token_file's.",
    )
    token_file: Path | None = Field(
        None,
        description="Where the token is kept when none is set: default <data_dir>/secrets/dashboard.token, "
        "generated (0600) on first use. A stack hands its dashboard this path, never the token.",
    )
    refresh_seconds: float = Field(5.0, gt=0, description="How often live views (the A/B page) refetch.")
    session_idle_seconds: float = Field(
        12 * 3600.0, gt=0, description="A sign-in session unused this long expires."
    )
    session_max_seconds: float = Field(
        7 * 86400.0, gt=0, description="A sign-in session expires this long after sign-in, used or not."
    )
    login_failures_per_client: int = Field(
        5, ge=1, description="Wrong tokens one address may try per login_window_seconds before 429."
    )
    login_failures_total: int = Field(
        50, ge=1, description="Wrong tokens from all addresses together per window before 429."
    )
    login_window_seconds: float = Field(60.0, gt=0, description="The window of the sign-in limits.")

    def token_path(self, data_dir: Path) -> Path:
        """Where the dashboard's token file is: ``token_file``, else ``<data_dir>/secrets/dashboard.token``."""
        return self.token_file or secret_path(data_dir, "dashboard.token")


class TrainerSettings(BaseModel):
    """Weight trainers (``agentstream train sft|kto|dpo|grpo``): what they consume and where checkpoints go."""

    model_config = ConfigDict(extra="forbid")

    output_dir: Path | None = Field(
        None, description="Checkpoints and adapters; default <data_dir>/checkpoints."
    )
    group_id_prefix: str = Field(
        "agentstream-trainer-",
        description="Each trainer consumes triplets in its own group: prefix + trainer name.",
    )
    window_count: int = Field(
        256, ge=1, description="A window closes after this many accepted (deduped) triplets."
    )
    window_seconds: float | None = Field(
        None, gt=0, description="...or this long after its first accepted triplet; unset: count only."
    )
    min_reward: float = Field(
        0.5, description="SFT learns from triplets rewarded at least this; KTO's label cut."
    )
    modes: list[str] = Field(
        default_factory=lambda: ["train", "prod"], description="Rollout modes learned from (never val/test)."
    )
    session_timeout_ms: int = Field(
        6_000, ge=1_000, description="Consumer-group session; joins take half of it."
    )


class MetricsSettings(BaseModel):
    """Every service process's /metrics (needs the metrics token), /healthz and /readyz (process/metrics.py)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port (Helm sets 9464).")
    token_file: Path | None = Field(None, description="Default <data_dir>/secrets/metrics.token (made).")


class ModelServerSettings(BaseModel):
    """The local model server (``agentstream serve-model``): an LLM resource's checkpoints behind an
    OpenAI-compatible API, on CPU (vLLM serves them on GPU, see ``serving/vllm.py``)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port.")
    default_label: str = Field(
        "production", description="The version a bare resource name (no :vN, no @label) serves."
    )
    cache_size: int = Field(
        2, ge=1, description="Checkpoint versions kept loaded, least recently used evicted."
    )
    preload: bool = Field(True, description="Load a version as soon as the default label moves to it.")
    device: str = Field("cpu", description="torch device of the served models (cpu, cuda, cuda:1, ...).")
    max_tokens: int = Field(1024, ge=1, description="Cap on a request's max_tokens.")
    require_token: bool = Field(
        True, description="Requests but /health need `Authorization: Bearer <token_file>` (the api_key)."
    )
    token_file: Path | None = Field(None, description="Default <data_dir>/secrets/model-server.token (made).")


class RetentionSettings(BaseModel):
    """How long ClickHouse keeps rows, in days, per kind of table; the sink applies it at start
    (``sinks/retention.py``). ``None`` or 0 keeps rows forever: the default, so that nothing is lost
    without someone choosing it. Kafka topics keep their own retention (``topics/catalogue.py``)."""

    model_config = ConfigDict(extra="forbid")

    events_days: int | None = Field(
        None,
        ge=0,
        description="spans, rewards, rollout_events, rollout_states, dead_letters; None/0: forever.",
    )
    triplets_days: int | None = Field(None, ge=0, description="triplets; None/0: forever.")
    decisions_days: int | None = Field(
        None,
        ge=0,
        description="resource_versions, resource_labels, promotion_decisions, version_metrics; None/0: forever.",
    )


class OtlpSettings(BaseModel):
    """The OTLP receiver (``agentstream otlp``, a member of ``agentstream up``): see producers/otlp/."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    http_port: int = Field(4318, ge=0, le=65535, description="OTLP/HTTP port; 0 picks a free port.")
    grpc_port: int = Field(4317, ge=0, le=65535, description="OTLP/gRPC port; 0 picks a free port.")
    require_token: bool = Field(True, description="Requests need `Authorization: Bearer <token_file>`.")
    token_file: Path | None = Field(None, description="Default <data_dir>/secrets/otlp.token (made).")
    max_body_bytes: int = Field(64 * 1024**2, ge=1_024, description="Larger requests are refused (413).")
    max_in_flight: int = Field(200_000, ge=1, description="Records not yet acked by Kafka; more: 429.")
    collector_topics: list[str] = Field(["otlp_spans", "otlp_logs"], description="Collector's; [] off.")
    collector_encoding: Literal["auto", "otlp_proto", "otlp_json"] = "auto"
    workers: int | None = Field(
        None, ge=0, description="Decode/encode processes; None: min(2, CPUs); 0: none."
    )
