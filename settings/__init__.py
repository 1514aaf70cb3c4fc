"""The one settings object: read at the edges (CLI, ``agentstream.init``) and passed in.

Every field can be set from the environment with the ``AGENTSTREAM_`` prefix; nested groups use a
double underscore, e.g. ``AGENTSTREAM_SINK__BATCH_MAX_ROWS=20000``. Kafka and ClickHouse client
configurations are built here and nowhere else.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentstream.process.secrets import read_secret, secret_path, write_secret
from agentstream.process.status import StackState


class _LibrdkafkaLog:
    """Routes librdkafka's log lines to the ``agentstream.kafka`` logger.

    Connection failures (facility ``FAIL``) go to DEBUG: clients report outages themselves, once,
    instead of a line per reconnect attempt.
    """

    _logger = logging.getLogger("agentstream.kafka")

    def log(self, level: int, fmt: str, *args: object) -> None:
        message = fmt % args if args else fmt
        if message.startswith("FAIL ") or message.startswith("FAIL["):
            level = logging.DEBUG
        self._logger.log(level, "%s", message)


KAFKA_LOG = _LibrdkafkaLog()


from .sections import (
    DashboardSettings,
    MetricsSettings,
    ModelServerSettings,
    OtlpSettings,
    PromotionSettings,
    RetentionSettings,
    RunnerSettings,
    SdkSettings,
    SinkSettings,
    StreamSettings,
    TrainerSettings,
)

__all__ = [
    "DashboardSettings",
    "KAFKA_LOG",
    "MetricsSettings",
    "ModelServerSettings",
    "OtlpSettings",
    "PromotionSettings",
    "RetentionSettings",
    "RunnerSettings",
    "SdkSettings",
    "Settings",
    "SinkSettings",
    "StreamSettings",
    "TrainerSettings",
]


class Settings(BaseSettings):
    """Everything agentstream needs to know about where things run."""

    model_config = SettingsConfigDict(env_prefix="AGENTSTREAM_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(Path.home() / ".agentstream", description="chDB data, spool, stack state.")
    bootstrap_servers: str | None = Field(
        None, description="Kafka bootstrap servers; unset means the broker of the running `agentstream up`."
    )
    kafka: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka properties for every client (security.protocol, sasl.*, ...).",
    )
    kafka_password_file: Path | None = Field(
        None,
        description="A 0600 file holding the SASL password (sasl.password of `kafka`), read when the settings "
        "are built. Processes agentstream starts are given this path, never the password.",
    )
    clickhouse_dsn: str | None = Field(
        None,
        description="clickhouse-connect DSN (http(s)://host:8123 or chdb:///path); default chdb under data_dir.",
    )
    schema_registry_url: str | None = Field(
        None, description="Confluent Schema Registry; when set, records use its wire format."
    )
    topic_prefix: str = "agentstream."
    partitions: int = Field(8, ge=1, description="Partitions of the per-rollout event topics.")
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description=(
            "min.insync.replicas of every topic agentstream creates (with acks=all, a write needs this many "
            "replicas); unset keeps the broker's default. At most replication_factor."
        ),
    )
    broker_port: int = Field(0, ge=0, le=65535, description="Embedded broker port; 0 picks a free one.")
    sdk: SdkSettings = Field(default_factory=SdkSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    model_server: ModelServerSettings = Field(default_factory=ModelServerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    otlp: OtlpSettings = Field(default_factory=OtlpSettings)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @model_validator(mode="after")
    def _kafka_password_from_file(self) -> Settings:
        # resolved here, at the edge: every client (librdkafka, the workers' aiokafka) reads settings.kafka
        if self.kafka_password_file is not None and "sasl.password" not in self.kafka:
            self.kafka = {**self.kafka, "sasl.password": read_secret(self.kafka_password_file.expanduser())}
        return self

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Settings:
        # more in-sync replicas than replicas: every acks=all write would fail with NotEnoughReplicas
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) must be at most replication_factor "
                f"({self.replication_factor}): set AGENTSTREAM_MIN_INSYNC_REPLICAS lower or "
                "AGENTSTREAM_REPLICATION_FACTOR higher"
            )
        return self

    # ---- derived locations -------------------------------------------------------------------
    @property
    def chdb_path(self) -> Path:
        return self.data_dir / "clickhouse"

    @property
    def default_clickhouse_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{self.chdb_path}"

    @property
    def spool_dir(self) -> Path:
        return self.sdk.spool_dir or self.data_dir / "spool"

    def topic(self, suffix: str) -> str:
        return f"{self.topic_prefix}{suffix}"

    def to_env(self) -> dict[str, str]:
        """``AGENTSTREAM_*`` variables that rebuild these settings in a child process."""
        env: dict[str, str] = {}
        # Secrets never go to a child's environment (any process of the user reads /proc/<pid>/environ):
        # the dashboard token reaches a stack's dashboard as its token_file (see Stack.start).
        secret: dict[str, Any] = {"dashboard": {"token"}, "kafka": {"sasl.password"}}
        for name, value in self.model_dump(mode="json", exclude_none=True, exclude=secret).items():
            key = f"AGENTSTREAM_{name.upper()}"
            if isinstance(value, dict) and isinstance(getattr(self, name), BaseModel):  # a settings group
                for sub, sub_value in value.items():
                    if sub_value is not None:
                        env[f"{key}__{sub.upper()}"] = _env_value(sub_value)
            else:
                env[key] = _env_value(value)
        password = self.kafka.get("sasl.password")
        if password:  # the Kafka password reaches a child as a file it reads (see kafka_password_file)
            env["AGENTSTREAM_KAFKA_PASSWORD_FILE"] = str(self._kafka_password_path(password))
        return env

    def _kafka_password_path(self, password: str) -> Path:
        """A 0600 file holding ``password``: ``kafka_password_file`` when it holds it, else one written
        under ``<data_dir>/secrets/``."""
        given = self.kafka_password_file
        if given is not None:
            try:
                if read_secret(given.expanduser()) == password:
                    return given
            except (OSError, ValueError):
                pass
        return write_secret(secret_path(self.data_dir, "kafka.password"), password)

    # ---- the running stack ---------------------------------------------------------------------
    def running_stack(self) -> StackState | None:
        """The live `agentstream up` of this data_dir, if one is running."""
        return StackState.load(self.data_dir)

    def resolved(self) -> Settings:
        """These settings with bootstrap servers filled in from the running stack when unset."""
        if self.bootstrap_servers:
            return self
        stack = self.running_stack()
        if stack is None or not stack.bootstrap_servers:
            raise RuntimeError(
                "No Kafka to talk to: set AGENTSTREAM_BOOTSTRAP_SERVERS, or start the embedded stack with "
                f"`agentstream up` (data dir {self.data_dir})."
            )
        return self.model_copy(update={"bootstrap_servers": stack.bootstrap_servers})

    # ---- client configurations: built here only ----------------------------------------------
    def _base_kafka(self) -> dict[str, Any]:
        if not self.bootstrap_servers:
            raise RuntimeError("bootstrap_servers is not set; call Settings.resolved() first.")
        return {"bootstrap.servers": self.bootstrap_servers, "logger": KAFKA_LOG, **self.kafka}

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        """Idempotent, acks=all producer. Kafka transactions are never used."""
        conf = {
            **self._base_kafka(),
            "enable.idempotence": True,
            "acks": "all",
            # the Java client's partitioner: keyed records land where any Kafka client puts them
            "partitioner": "murmur2_random",
            "linger.ms": self.sdk.linger_ms,
            "batch.size": 1_048_576,
            "compression.type": self.sdk.compression,
            "message.timeout.ms": self.sdk.delivery_timeout_ms,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "message.max.bytes": 1_048_576,
            "reconnect.backoff.max.ms": 1_000,
        }
        conf.update(overrides)
        return conf

    def consumer_config(self, group_id: str, **overrides: Any) -> dict[str, Any]:
        """Manual-commit consumer; eager assignor (cooperative rebalancing is unreliable on Tansu)."""
        conf = {
            **self._base_kafka(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6_000,
            "heartbeat.interval.ms": 1_000,
            "fetch.wait.max.ms": 50,
            "partition.assignment.strategy": "range",
            "max.partition.fetch.bytes": 8 * 1_048_576,
        }
        conf.update(overrides)
        return conf

    def admin_config(self) -> dict[str, Any]:
        return self._base_kafka()


def _env_value(value: object) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)
