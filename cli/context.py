"""What every command shares: the consoles, this invocation's settings, and Ctrl-C as an event."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from agentstream.settings import Settings

__all__ = ["console", "err_console", "kafka_refusal_exits", "resolved_settings", "state", "stop_event"]

console = Console()
err_console = Console(stderr=True)


class _State:
    #: set by the root callback (cli/app.py) before any command runs
    settings: Settings


state = _State()


def stop_event() -> threading.Event:
    """An event set by SIGINT or SIGTERM: long-running commands stop when it is set."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def resolved_settings() -> Settings:
    """The settings with bootstrap servers filled in from the running stack; exit 2 when there are none."""
    try:
        return state.settings.resolved()
    except RuntimeError as e:
        err_console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from e


@contextmanager
def kafka_refusal_exits() -> Iterator[None]:
    """Kafka rejected the service's principal: print the one-line reason (broker, principal, fix) and
    exit 3, instead of a traceback or a client retrying forever (see topics/auth.py)."""
    from agentstream.topics.auth import KafkaAuthError

    try:
        yield
    except KafkaAuthError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(3) from e
