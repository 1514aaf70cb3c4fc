"""Our HTTP servers' one way to run: an ASGI app under uvicorn on a socket we bound ourselves.

The ClickHouse gateway, the model server and the dashboard bind with
:func:`~agentstream.process.ports.listening_socket` (the port is known before serving starts, and a
bind failure names its address) and hand the socket to a :class:`BackgroundServer`.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Self

import uvicorn
from starlette.types import ASGIApp

_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def http_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` of a server listening on ``host``; a loopback address stands in for
    all interfaces, and an IPv6 address is bracketed."""
    shown = _LOOPBACK.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


class BackgroundServer:
    """Serves ``app`` with uvicorn on ``sock``: on a background thread (:meth:`start`, :meth:`stop`)
    or on the calling thread (:meth:`run`). The server owns the socket and closes it when it stops.

    Args:
        app: the ASGI app.
        sock: a listening socket (see :func:`~agentstream.process.ports.listening_socket`).
        name: what the server is, for its thread and errors ("ClickHouse gateway").
        config: more ``uvicorn.Config`` options (``lifespan``, ``timeout_keep_alive``...); the
            server logs warnings only and no access log.
    """

    def __init__(self, app: ASGIApp, sock: socket.socket, *, name: str, **config: Any) -> None:
        self.name = name
        self.socket = sock
        self.port: int = sock.getsockname()[1]
        options: dict[str, Any] = {"log_level": "warning", "access_log": False, **config}
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> Self:
        """Serve on a background thread; returns once connections are accepted.

        Raises:
            RuntimeError: the server did not start within ``timeout`` seconds (it is stopped).
        """
        if self._thread is not None:
            raise RuntimeError(f"the {self.name} is already started")
        self._thread = threading.Thread(
            target=self._serve, name=self.name.lower().replace(" ", "-"), daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the {self.name} failed to start")
            time.sleep(0.01)
        return self

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        except SystemExit:  # uvicorn exits when its startup fails (logged); start() reports it
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """Finish in-flight requests (up to ``timeout`` seconds) and stop serving."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.socket.close()

    def run(self) -> None:
        """Serve on the calling thread until SIGINT/SIGTERM (uvicorn stops gracefully, then raises
        the signal again to the handler that was installed before)."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()
