"""How a runner calls the user's agent: sync agents on worker threads, async agents on one event
loop; with ``(task)`` or ``(task, rollout)`` as its signature asks."""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

logger = logging.getLogger("agentstream.producers.runner")


def is_async_agent(agent: Callable[..., Any]) -> bool:
    """Whether calling ``agent`` gives a coroutine: an ``async def``, or an object with one as ``__call__``."""
    if inspect.iscoroutinefunction(agent):
        return True
    call = getattr(agent, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def wants_rollout(agent: Callable[..., Any]) -> bool:
    """``agent(task, rollout)`` when it takes a second positional parameter without a default (or
    named ``rollout``), or ``*args``; else ``agent(task)``."""
    try:
        signature = inspect.signature(agent)
    except (TypeError, ValueError):
        return False
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < 2:
        return False
    second = positional[1]
    return second.default is inspect.Parameter.empty or second.name == "rollout"


async def awaited(awaitable: Any) -> Any:
    """A coroutine awaiting ``awaitable`` (``asyncio.run`` takes coroutines only)."""
    return await awaitable


class AgentThreads:
    """Daemon worker threads for sync agents.

    Not a ``concurrent.futures.ThreadPoolExecutor``: its threads are not daemons, and it joins them
    at interpreter exit, so an agent that never returns (an attempt the runner released after its
    grace period, stuck in a call without a timeout) would keep the process from exiting after
    SIGTERM. Here it does not.
    """

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the next free thread."""
        self._jobs.put((fn, args))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except BaseException:  # a job must never kill a worker thread
                logger.exception("runner worker job failed")

    def close(self) -> None:
        """Let each thread exit once it is done with the jobs queued before; returns at once."""
        for _ in self._threads:
            self._jobs.put(None)


class AgentLoop:
    """One asyncio event loop in a daemon thread, for async agents."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Any) -> Future[Any]:
        """Schedule ``coro`` on the loop; its future can cancel it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self, timeout: float = 1.0) -> None:
        """Cancel what still runs, stop the loop and close it (if its thread stopped in ``timeout``)."""

        # Cancelled (released) attempts get a moment to unwind; the thread is a daemon anyway.
        def stop() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_later(min(timeout, 0.2), self.loop.stop)

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
