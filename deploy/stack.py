"""``agentstream up``: the embedded stack as one supervised group.

Members: the Kafka broker (embedded Tansu unless ``bootstrap_servers`` points at a cluster), topic
creation, the ClickHouse sink (which also serves queries while it owns the chDB directory), the
stream workers, the A/B promotion controller, the OTLP receiver and the web dashboard. Crashed
members are restarted with backoff; a restarted memory-only broker gets its topics back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentstream.clickhouse.credentials import ensure_credentials
from agentstream.process.lifecycle import terminate
from agentstream.process.secrets import private_dir
from agentstream.process.status import StackState
from agentstream.process.status import read_status as worker_status
from agentstream.settings import Settings
from agentstream.topics.admin import ensure_topics
from agentstream.topics.catalogue import CATALOGUE, changelog_topics

from .broker import EmbeddedBroker

logger = logging.getLogger(__name__)


@dataclass
class MemberStatus:
    name: str
    state: str = "starting"
    pid: int | None = None
    restarts: int = 0
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class ChildProcess:
    """A member running as ``python -m agentstream.cli <args>``, restarted when it dies."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_path: Path, nice: int = 0
    ) -> None:
        self.name = name
        self.nice = nice
        self.args = args
        self.env = env
        self.log_path = log_path
        self.status = MemberStatus(name)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._next_start = 0.0
        self._backoff = 1.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # 0600: a member's log may quote the data it handled
        self._log = os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "agentstream.cli", *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children in order
            umask=0o077,  # what members create (chDB, spools, status files) is the user's alone
        )
        if self.nice:
            # its own session, so its own process group: every thread it has, and every one it starts
            # later (they inherit it), runs at the lower priority
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PGRP, self._process.pid, self.nice)
        self.status.pid = self._process.pid
        self.status.state = "running"

    def check(self) -> None:
        """Restart the member if it exited (with exponential backoff)."""
        if self._process is None:
            return
        code = self._process.poll()
        if code is None:
            if time.monotonic() > self._next_start + 60:
                self._backoff = 1.0  # it stayed up: forget earlier crashes
            return
        now = time.monotonic()
        if self.status.state == "running":
            self.status.state = "restarting"
            self.status.detail = f"exited with {code}; see {self.log_path}"
            logger.warning("%s exited with code %s; restarting in %.0fs", self.name, code, self._backoff)
            self._next_start = now + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)
        if now >= self._next_start:
            self.status.restarts += 1
            self._log.close()
            self.start()

    def stop(self, timeout: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process, timeout)
        if self._log is not None:
            self._log.close()
        self.status.state = "stopped"


class Stack:
    """Broker + topics + sink + stream workers, supervised. Use as a context manager or
    ``start()``/``stop()``.

    Args:
        settings: where things run; with ``bootstrap_servers`` unset an embedded broker is started.
        sink: run the ClickHouse sink.
        workers: stream workers to run (they share the partitions); default ``settings.streams.workers``.
        promoter: run the A/B promotion controller (one per cluster).
        dashboard: run the web dashboard (on ``settings.dashboard.port``).
        otlp: run the OTLP receiver (``settings.otlp``: HTTP, gRPC and the Collector's topics).
        nice: run the broker and every member at this lower scheduling priority (``os.nice``), so
            that work sharing their cores (the demo's LLM server) comes first.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sink: bool = True,
        workers: int | None = None,
        promoter: bool = True,
        dashboard: bool = True,
        otlp: bool = True,
        nice: int = 0,
    ) -> None:
        self.settings = settings
        self.nice = nice
        self.data_dir = settings.data_dir
        self.logs = settings.data_dir / "logs"
        self.broker: EmbeddedBroker | None = None
        self.broker_status = MemberStatus("kafka")
        self.topics_status = MemberStatus("topics")
        self.children: list[ChildProcess] = []
        self._want_sink = sink
        self._workers = settings.streams.workers if workers is None else workers
        self._want_promoter = promoter
        self._want_dashboard = dashboard
        self._want_otlp = otlp
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._state: StackState | None = None
        self.started_at = 0.0

    @property
    def bootstrap_servers(self) -> str:
        if self.settings.bootstrap_servers:
            return self.settings.bootstrap_servers
        assert self.broker is not None
        return self.broker.bootstrap_servers

    def resolved_settings(self) -> Settings:
        return self.settings.model_copy(update={"bootstrap_servers": self.bootstrap_servers})

    def start(self) -> Stack:
        self.started_at = time.time()
        existing = StackState.load(self.data_dir)
        if existing is not None and existing.pid != os.getpid():
            raise RuntimeError(
                f"a stack already runs for {self.data_dir} (pid {existing.pid}); stop it first"
            )
        # The data dir holds every prompt and the secrets: the user's alone, whatever existed before.
        private_dir(self.data_dir)
        private_dir(self.logs)
        os.umask(0o077)  # the supervisor's own files (stack state, broker log) too
        if self._want_sink:
            ensure_credentials(self.settings)  # the query endpoint's, before any member needs them
        if not self.settings.bootstrap_servers:
            self.broker = EmbeddedBroker(
                self.settings.broker_port, log_path=self.logs / "kafka.log", nice=self.nice
            ).start()
            self.broker_status.state, self.broker_status.pid = "running", self.broker.pid
            self.broker_status.detail = f"embedded Tansu on {self.broker.bootstrap_servers}"
        else:
            self.broker_status.state, self.broker_status.detail = "external", self.settings.bootstrap_servers
        self._create_topics()
        self._state = StackState(
            pid=os.getpid(), bootstrap_servers=self.bootstrap_servers, started_at=self.started_at
        )
        self._state.save(self.data_dir)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
        env = {**inherited, **self.resolved_settings().to_env()}
        if self._want_dashboard:  # the dashboard's token by file (0600), never in the environment
            from agentstream.analytics.dashboard_auth import token_file_env

            env.update(token_file_env(self.settings))

        def member(name: str, command: str) -> ChildProcess:
            return ChildProcess(name, [command], env, self.logs / f"{name}.log", self.nice)

        if self._want_sink:
            self.children.append(member("sink", "sink"))
        for index in range(self._workers):
            self.children.append(member(f"worker-{index + 1}", "worker"))
        if self._want_promoter:
            self.children.append(member("promoter", "promoter"))
        if self._want_otlp:  # makes its bearer token file itself (<data_dir>/secrets/otlp.token)
            self.children.append(member("otlp", "otlp"))
        if self._want_dashboard:  # reads through the sink's gateway; answers 503 until the sink is up
            self.children.append(member("dashboard", "dashboard"))
        for child in self.children:
            child.start()
        self._monitor = threading.Thread(target=self._supervise, name="agentstream-stack", daemon=True)
        self._monitor.start()
        return self

    def _create_topics(self) -> None:
        statuses = ensure_topics(
            self.resolved_settings(), CATALOGUE + changelog_topics(self.settings.streams.app_id)
        )
        created = sum(s.outcome == "created" for s in statuses)
        mismatched = [s.name for s in statuses if s.outcome == "mismatch"]
        self.topics_status.state = "ready" if not mismatched else "mismatch"
        self.topics_status.detail = f"{len(statuses)} topics ({created} created)" + (
            f"; partition mismatch: {', '.join(mismatched)}" if mismatched else ""
        )

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            broker = self.broker
            if broker is not None and not broker.is_running():
                logger.warning("Kafka broker exited; restarting it (memory storage: its log is lost)")
                self.broker_status.state = "restarting"
                # The embedded broker's log is gone: the stream workers' tables, positions and
                # groups describe a log that no longer exists. They are stopped before the broker
                # is back (so none writes to a topic before it is re-created with its partitions)
                # and started afresh after; the SDKs' replay window re-sends the recent records.
                workers = [child for child in self.children if child.name != "sink"]
                try:
                    for child in workers:
                        child.stop(timeout=5.0)  # nothing to flush to: the log is gone
                    broker.restart()
                    self._create_topics()
                    for child in workers:
                        child.start()
                    self.broker_status.state, self.broker_status.pid = "running", broker.pid
                    self.broker_status.restarts += 1
                except Exception as e:
                    self.broker_status.detail = str(e)
                    if broker.is_running():  # back, but topic setup failed: run the workers anyway
                        for child in workers:
                            if child.status.state == "stopped":
                                child.start()
                    continue
            for child in self.children:
                child.check()
                if child.name == "sink":
                    child.status.info = self.sink_status() or {}
                elif child.name.startswith("worker") and child.status.pid:
                    child.status.info = worker_status(self.data_dir, child.status.pid) or {}
                elif child.name == "dashboard" and child.status.state == "running":
                    child.status.detail = self.dashboard_url() or "starting"
                elif child.name == "otlp" and child.status.state == "running":
                    child.status.detail = self.otlp_summary() or "starting"

    def dashboard_url(self) -> str | None:
        """Where the dashboard member serves, once it listens."""
        from agentstream.analytics.dashboard import DashboardState

        state = DashboardState.load(self.data_dir)
        return state.url if state is not None else None

    def otlp_summary(self) -> str | None:
        """Where the OTLP receiver member listens, once it does."""
        from agentstream.producers.otlp.service import OtlpState

        state = OtlpState.load(self.data_dir)
        return state.summary() if state is not None else None

    def sink_status(self) -> dict[str, Any] | None:
        """The sink's live counters, read from its gateway."""
        from agentstream.clickhouse.gateway import GatewayState

        state = GatewayState.load(self.settings.chdb_path)
        return state.status(timeout=1) if state is not None else None

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the sink serves queries and every stream worker has its partitions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sink_ready = not self._want_sink or self.sink_status() is not None
            workers = [c for c in self.children if c.name.startswith("worker")]
            workers_ready = all(
                (worker_status(self.data_dir, c.status.pid) or {}).get("ready")
                for c in workers
                if c.status.pid
            )
            if sink_ready and workers_ready:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the stack did not become ready in {timeout:.0f}s; see the logs in {self.logs}")

    def members(self) -> list[MemberStatus]:
        return [self.broker_status, self.topics_status, *(c.status for c in self.children)]

    def stop(self) -> None:
        """Stop the sink first (it flushes), then the broker."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        for child in reversed(self.children):
            child.stop()
        if self.broker is not None:
            self.broker.stop()
            self.broker_status.state = "stopped"
        if self._state is not None:
            self._state.withdraw(self.data_dir)
            self._state = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
