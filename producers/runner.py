"""Runners: take attempts from the tasks topic as a consumer group, run the user's agent, report outcomes.

    def agent(task: dict) -> float:          # or agent(task, rollout), or async def
        answer = solve(task["question"])
        return 1.0 if answer == task["expected"] else 0.0   # a number is emitted as a reward

    with agentstream.Runner(agent, concurrency=8):
        ...                                  # runs in the background until the block ends
    agentstream.Runner(agent).run()          # or in the foreground, until SIGINT/SIGTERM

What a runner reports (rollout-events topic, key rollout_id): ``attempt_started`` only for attempts
still running after ``runner.lazy_start_seconds`` (short attempts are reported by one event),
``heartbeat`` every ``runner.heartbeat_seconds`` after that, and always one ``attempt_finished``
(status, error, started_at, resources used, worker id, LLM calls and tokens) - or, for an attempt
still running when the runner stops after its grace period, ``attempt_released``, after which
whatever that attempt does is no longer reported as its outcome.

Delivery is at least once: a task's offset is committed only once its outcome event has been
acknowledged by Kafka, and only up to the lowest unfinished task of its partition, so a crashed
runner's tasks are run again elsewhere. Every attempt has a deterministic id
(``attempt_id_for(rollout_id, n)``), which lets the lifecycle processor drop duplicate outcomes.
Released attempts are committed too: the processor requeues them on ``attempt_released``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import math
import numbers
import os
import queue
import random
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import FrameType
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from agentstream.resources.store import ResourceError, ResourceStore, pick_label, traffic_bucket
from agentstream.schemas import AvroDeserializer, SchemaStore, Task, attempt_id_for
from agentstream.schemas.rollout_event import RolloutEventType
from agentstream.settings import Settings
from agentstream.topics.catalogue import SCHEMAS, TASKS
from agentstream.topics.schema_resolver import SchemaTopicResolver

from . import client as _client_module
from .client import AgentStream
from .tracer import Rollout, now_us

logger = logging.getLogger(__name__)

#: How many finished attempts a runner remembers, to skip tasks redelivered after a rebalance.
_RECENT_ATTEMPTS = 10_000
_POLL_TIMEOUT = 0.05
_COMMIT_INTERVAL = 0.2

TopicPartitionKey = tuple[str, int]
Position = tuple[TopicPartitionKey, int]

_RUNNING, _FINISHED, _RELEASED = "running", "finished", "released"


@dataclass
class RunnerStats:
    """Counters of a runner (read from any thread; approximate while it runs)."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    #: undecodable task records, and redelivered tasks of attempts this runner already ran
    skipped: int = 0
    in_flight: int = 0
    assigned_partitions: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


class _Outcome:
    """What a runner remembers of an attempt it ran: the task records it answers (a redelivered
    copy adds one) and whether its outcome event was acknowledged by Kafka (then they may be
    committed). Guarded by ``Runner._lock``."""

    __slots__ = ("positions", "delivered")

    def __init__(self, positions: list[Position]) -> None:
        self.positions = positions
        self.delivered = False


class _Attempt:
    """One attempt this runner started. Fields that change are guarded by ``Runner._lock``."""

    __slots__ = (
        "task",
        "attempt_id",
        "rollout",
        "outcome",
        "t0",
        "started_at",
        "started_sent",
        "last_beat",
        "state",
        "handle",
    )

    def __init__(self, task: Task, attempt_id: str, rollout: Rollout, positions: list[Position]) -> None:
        self.task = task
        self.attempt_id = attempt_id
        self.rollout = rollout
        self.outcome = _Outcome(positions)
        self.t0 = time.monotonic()
        self.started_at = now_us()
        self.started_sent = False
        self.last_beat = self.t0
        self.state = _RUNNING
        self.handle: Future[Any] | None = None


@dataclass
class _Queued:
    task: Task
    positions: list[Position]


class _PartitionOffsets:
    """Received task offsets of one partition and whether each is done; the commit position is
    the lowest one not done (or one past the highest received)."""

    __slots__ = ("pending", "next", "committed")

    def __init__(self) -> None:
        self.pending: dict[int, bool] = {}
        self.next = -1
        self.committed = -1

    def received(self, offset: int) -> None:
        self.pending.setdefault(offset, False)
        self.next = max(self.next, offset + 1)

    def done(self, offset: int) -> None:
        if offset in self.pending:
            self.pending[offset] = True

    def position(self) -> int:
        open_offsets = [o for o, done in self.pending.items() if not done]
        position = min(open_offsets) if open_offsets else self.next
        for offset in [o for o in self.pending if o < position]:
            del self.pending[offset]
        return position


class _ThreadPool:
    """Daemon worker threads: an agent that never returns must not keep the process alive
    (``concurrent.futures`` joins its threads at exit)."""

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
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
        for _ in self._threads:
            self._jobs.put(None)


class _LoopThread:
    """One asyncio event loop in a daemon thread, for async agents."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self, timeout: float = 1.0) -> None:
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


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(16):04x}"


def _is_async(agent: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(agent):
        return True
    call = getattr(agent, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _wants_rollout(agent: Callable[..., Any]) -> bool:
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


def _emit_return_reward(result: Any, attempt: _Attempt) -> None:
    rollout = attempt.rollout
    if isinstance(result, bool) or not isinstance(result, numbers.Real):
        return
    if attempt.state != _RUNNING:
        return  # released: the return value of an abandoned attempt is not its outcome
    value = float(result)
    if not math.isfinite(value):
        logger.warning(
            "Agent returned %r for rollout %s: not emitted as a reward", result, rollout.rollout_id
        )
        return
    rollout.emit_reward(value, name="return", source="rule")


class Runner:
    """Runs an agent on the tasks of the tasks topic, as a member of a consumer group.

    Args:
        agent: the user's function, sync or async: ``agent(task_input)`` or
            ``agent(task_input, rollout)`` (see :class:`~agentstream.producers.tracer.Rollout`;
            it is also :func:`agentstream.current_rollout`). ``task_input`` is the enqueued task,
            decoded from JSON. A real number it returns is emitted as a reward (name ``return``,
            source ``rule``); an exception, or ``rollout.fail(...)``, fails the attempt.
        settings: Kafka and the ``runner`` settings; default: the client's, else from the environment.
        client: the SDK client spans, rewards and lifecycle events go through; default: without
            ``settings``, the one :func:`agentstream.init` made; else a client of the runner's own
            (closed when it stops).
        concurrency: attempts run at once (default ``settings.runner.concurrency``); sync agents
            run in that many threads, async agents on one event loop thread.
        worker_id: reported on every lifecycle event; default ``<host>-<pid>-<random>``.
        resources: the resource store the runner resolves versions from (``True``: one of its own,
            following the resource topics live; ``False``: none). Each attempt gets, per resource,
            the version its task pins (a number or a label) or else the version of the label its
            task key falls into under ``traffic``; the choice is stamped on the rollout and its
            spans and available to the agent as ``rollout.resource(name)``. New versions and label
            moves apply to the next attempt, without a restart.
        traffic: label weights of the A/B split (default ``settings.runner.traffic``); the task key
            is ``task.metadata["task_key"]`` or else the rollout id, so retries stay in their arm.
    """

    def __init__(
        self,
        agent: Callable[..., Any],
        settings: Settings | None = None,
        *,
        client: AgentStream | None = None,
        concurrency: int | None = None,
        worker_id: str | None = None,
        resources: ResourceStore | bool = True,
        traffic: Mapping[str, float] | None = None,
    ) -> None:
        if not callable(agent):
            raise TypeError(f"agent must be callable, got {agent!r}")
        self._owns_client = False
        if client is None and settings is None:
            client = _client_module._default
        if client is None:
            client = AgentStream(settings)
            self._owns_client = True
        self.client = client
        self.settings = (settings or client.settings).resolved()
        self.config = self.settings.runner
        self.concurrency = concurrency if concurrency is not None else self.config.concurrency
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        # Tasks received ahead of a free slot: measured on the embedded broker with 10 ms tasks,
        # 4 slots ran 78 tasks/s with none waiting, 141/s with 4 (a freed slot need not wait for
        # a fetch). They are tasks of our own partitions, which no other runner could take anyway.
        self._prefetch = self.concurrency
        self.worker_id = worker_id or default_worker_id()
        self.agent = agent
        self.is_async = _is_async(agent)
        self._pass_rollout = _wants_rollout(agent)
        self.stats = RunnerStats()
        self.topic = self.settings.topic(TASKS.name)
        self.traffic = dict(traffic if traffic is not None else self.config.traffic)
        self._owns_store = resources is True
        self.resources: ResourceStore | None = (
            ResourceStore(self.settings, who=self.worker_id) if resources is True else (resources or None)
        )

        self._lock = threading.Lock()
        self._inflight: dict[str, _Attempt] = {}
        self._recent: OrderedDict[str, _Outcome] = OrderedDict()
        self._undelivered = 0
        self._acks: queue.SimpleQueue[list[Position]] = queue.SimpleQueue()
        self._backlog: OrderedDict[str, _Queued] = OrderedDict()
        self._offsets: dict[TopicPartitionKey, _PartitionOffsets] = {}
        self._paused = False
        self._last_commit = 0.0
        self._acked_since_commit = False

        self._stop_requested = threading.Event()
        self._force = threading.Event()
        self._finished = threading.Event()
        self._running = False
        self._thread: threading.Thread | None = None
        self._heartbeat_wake = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._slot_freed = threading.Event()
        self._consumer: Consumer | None = None
        self._pool: _ThreadPool | None = None
        self._loop: _LoopThread | None = None

    # ---- public control -------------------------------------------------------------------------
    def run(self) -> None:
        """Take and run tasks until :meth:`stop` (or SIGINT/SIGTERM, when called in the main
        thread; a second signal skips the grace period), then shut down gracefully."""
        if self._running:
            raise RuntimeError("this Runner is already running")
        self._stop_requested.clear()
        self._force.clear()
        self._run()

    def _run(self) -> None:
        if self._running:
            raise RuntimeError("this Runner is already running")
        self._running = True
        self._finished.clear()
        restore = self._install_signals()
        try:
            try:
                self._open()
                while not self._stop_requested.is_set():
                    self._step()
            finally:
                self._shutdown()
        finally:
            restore()
            self._running = False
            self._finished.set()

    def start(self) -> Runner:
        """Run in a background thread; returns at once."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this Runner is already started")
        self._stop_requested.clear()
        self._force.clear()
        self._finished.clear()
        self._thread = threading.Thread(
            target=self._run_logged, name=f"agentstream-runner-{self.worker_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop taking tasks and shut down gracefully: in-flight attempts get
        ``runner.shutdown_grace_seconds`` to finish, the rest are released; offsets are committed.

        Waits up to ``timeout`` seconds (default: the grace period plus 30 s) for the shutdown to
        complete; returns whether it did.
        """
        self._stop_requested.set()
        if timeout is None:
            timeout = self.config.shutdown_grace_seconds + 30.0
        if not self._running and (self._thread is None or not self._thread.is_alive()):
            return True
        done = self._finished.wait(timeout)
        if self._thread is not None and done:
            self._thread.join(timeout=1.0)
        return done

    def request_stop(self, force: bool = False) -> None:
        """Ask the runner to stop and return at once; ``force`` skips the grace period (in-flight
        attempts are released right away)."""
        if force:
            self._force.set()
        self._stop_requested.set()

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is executing (taking tasks or shutting down)."""
        return self._running

    @property
    def stopped(self) -> bool:
        """Whether a run has completed its shutdown."""
        return self._finished.is_set()

    def __enter__(self) -> Runner:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- setup and teardown -----------------------------------------------------------------------
    def _run_logged(self) -> None:
        try:
            self._run()
        except Exception:
            logger.exception("Runner %s stopped on an error", self.worker_id)

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handle(signum: int, frame: FrameType | None) -> None:
            if self._stop_requested.is_set():
                self._force.set()
            self._stop_requested.set()

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _open(self) -> None:
        session = self.config.session_timeout_ms
        conf = self.settings.consumer_config(
            self.config.group_id,
            **{
                "session.timeout.ms": session,
                # well inside the session, as the broker expects
                "heartbeat.interval.ms": max(100, min(1_000, session // 4)),
                "client.id": f"agentstream-runner-{self.worker_id}",
            },
        )
        resolver = SchemaTopicResolver(
            self.settings.consumer_config("unused"), self.settings.topic(SCHEMAS.name)
        )
        self._deserializer = AvroDeserializer(
            Task.avro_schema(), SchemaStore.shipped(resolver), registry=self.settings.schema_registry_url
        )
        if self.resources is not None:
            self.resources.open()
        if self.is_async:
            self._loop = _LoopThread(f"agentstream-runner-loop-{self.worker_id}")
        else:
            self._pool = _ThreadPool(self.concurrency, f"agentstream-runner-{self.worker_id}")
        self._heartbeat_stop.clear()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeats, name=f"agentstream-runner-heartbeat-{self.worker_id}", daemon=True
        )
        self._heartbeat_thread.start()
        consumer = Consumer(conf)
        consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._consumer = consumer
        logger.info(
            "Runner %s: taking tasks from %s (group %s)", self.worker_id, self.topic, self.config.group_id
        )

    def _shutdown(self) -> None:
        """Stop taking tasks, give in-flight attempts their grace, release the rest, commit, close."""
        consumer = self._consumer
        try:
            if consumer is not None:
                # Tasks received but not started stay uncommitted: another runner takes them.
                self._backlog.clear()
                self._set_paused(True)
                deadline = time.monotonic() + self.config.shutdown_grace_seconds
                while self._in_flight() and time.monotonic() < deadline and not self._force.is_set():
                    self._idle_poll()
            self._release_all()
            if consumer is not None:
                # Commit what finished, once its outcome (or release) is acknowledged by Kafka.
                deadline = time.monotonic() + self.settings.sdk.delivery_timeout_ms / 1_000 + 2.0
                while self._undelivered > 0 and time.monotonic() < deadline:
                    self._idle_poll()
                if self._undelivered > 0:
                    logger.warning(
                        "Runner %s: %d outcome event(s) not acknowledged by Kafka; their tasks stay uncommitted",
                        self.worker_id,
                        self._undelivered,
                    )
                self._drain_acks()
                self._commit(sync=True)
        finally:
            if consumer is not None:
                try:
                    consumer.close()
                except Exception as e:  # closing must not hide the shutdown's result
                    logger.warning("Runner %s: closing the consumer failed: %s", self.worker_id, e)
                self._consumer = None
            self._heartbeat_stop.set()
            self._heartbeat_wake.set()
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            if self._loop is not None:
                self._loop.close()
                self._loop = None
            if self._owns_store and self.resources is not None:
                self.resources.close()
            if self._owns_client:
                self.client.close()
            else:
                self.client.flush()
            self.stats.assigned_partitions = 0
            logger.info(
                "Runner %s stopped: %d succeeded, %d failed, %d released",
                self.worker_id,
                self.stats.succeeded,
                self.stats.failed,
                self.stats.released,
            )

    # ---- the consumer loop ------------------------------------------------------------------------
    def _step(self) -> None:
        assert self._consumer is not None
        self._drain_acks()
        self._dispatch()
        # Up to `_prefetch` tasks wait in a local backlog besides those running.
        room = self.concurrency + self._prefetch - self._in_flight() - len(self._backlog)
        if room <= 0:
            self._set_paused(True)
        elif self._paused and len(self._backlog) <= self._prefetch // 2:
            self._set_paused(False)
        if self._backlog and self._in_flight() >= self.concurrency:
            # Tasks wait for a slot: wake when an attempt finishes rather than after a poll timeout.
            for message in self._consumer.consume(num_messages=max(room, 1), timeout=0):
                self._receive(message)
            self._slot_freed.wait(_POLL_TIMEOUT)
            self._slot_freed.clear()
        else:
            for message in self._consumer.consume(num_messages=max(room, 1), timeout=_POLL_TIMEOUT):
                self._receive(message)
        self._dispatch()
        self._maybe_commit()

    def _idle_poll(self) -> None:
        """Keep group membership and commits going while not taking tasks (shutdown)."""
        assert self._consumer is not None
        # Anything still fetched is dropped unrecorded: its offset is never committed here.
        self._consumer.consume(num_messages=1, timeout=_POLL_TIMEOUT)
        self._drain_acks()
        self._maybe_commit()

    def _in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused or self._consumer is None:
            return
        consumer = self._consumer
        assignment = consumer.assignment()
        try:
            if paused:
                consumer.pause(assignment)
            else:
                consumer.resume(assignment)
        except KafkaException as e:
            logger.debug("pause/resume failed: %s", e)
            return
        self._paused = paused
        if not paused:
            # librdkafka notices a resume only at its fetcher's next wake-up (up to 1 s when
            # everything was paused); a seek to where we are wakes it at once.
            try:
                for tp in consumer.position(assignment):
                    if tp.offset >= 0:
                        consumer.seek(tp)
            except KafkaException as e:
                logger.debug("seek after resume failed: %s", e)

    def _receive(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                logger.warning("Runner %s: consumer error: %s", self.worker_id, error)
            return
        key = (message.topic(), message.partition())
        offset = message.offset()
        part = self._offsets.get(key)
        if part is None:
            part = self._offsets[key] = _PartitionOffsets()
        part.received(offset)
        self.stats.received += 1
        try:
            task = Task.from_avro(self._deserializer(message.value()))
        except Exception as e:
            logger.error("Data error: skipping undecodable task at %s[%d]@%d: %s", key[0], key[1], offset, e)
            self.stats.skipped += 1
            part.done(offset)
            return
        attempt_id = attempt_id_for(task.rollout_id, task.attempt_number)
        position = (key, offset)
        with self._lock:
            running = self._inflight.get(attempt_id)
            known = running.outcome if running is not None else self._recent.get(attempt_id)
            if known is not None:
                # Redelivered (a rebalance came before the commit): answered by the run we have.
                self.stats.skipped += 1
                if known.delivered:
                    part.done(offset)
                else:
                    known.positions.append(position)
                return
        queued = self._backlog.get(attempt_id)
        if queued is not None:
            queued.positions.append(position)
        else:
            self._backlog[attempt_id] = _Queued(task, [position])

    def _dispatch(self) -> None:
        while self._backlog and not self._stop_requested.is_set() and self._in_flight() < self.concurrency:
            attempt_id, queued = self._backlog.popitem(last=False)
            self._start(attempt_id, queued)

    def _drain_acks(self) -> None:
        while True:
            try:
                positions = self._acks.get_nowait()
            except queue.Empty:
                return
            for key, offset in positions:
                part = self._offsets.get(key)
                if part is not None:  # else: revoked meanwhile; its new owner decides
                    part.done(offset)
            self._acked_since_commit = True

    def _maybe_commit(self) -> None:
        if self._acked_since_commit and time.monotonic() - self._last_commit >= _COMMIT_INTERVAL:
            self._commit()

    def _commit(self, sync: bool = False, only: set[TopicPartitionKey] | None = None) -> None:
        if self._consumer is None:
            return
        self._acked_since_commit = False
        self._last_commit = time.monotonic()
        offsets = []
        for key, part in self._offsets.items():
            if only is not None and key not in only:
                continue
            position = part.position()
            if position >= 0 and (position > part.committed or (sync and position == part.committed)):
                offsets.append(TopicPartition(key[0], key[1], position))
                part.committed = position
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=not sync)
        except KafkaException as e:
            # Not fatal: the tasks are run again by whoever gets the partition (at least once).
            logger.warning("Runner %s: offset commit failed: %s", self.worker_id, e)
            for tp in offsets:
                part = self._offsets.get((tp.topic, tp.partition))
                if part is not None:
                    part.committed = -1

    # ---- rebalances (called inside consume(), on the loop thread) ---------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._offsets.setdefault((tp.topic, tp.partition), _PartitionOffsets())
        # a new assignment starts unpaused; the next step pauses it again if we are full
        self._paused = False
        self.stats.assigned_partitions = len(partitions)  # eager assignor: the whole assignment
        logger.info("Runner %s: assigned %s", self.worker_id, sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._drain_acks()
        self._commit(sync=True, only=keys)
        self._forget(keys)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget({(tp.topic, tp.partition) for tp in partitions})

    def _forget(self, keys: set[TopicPartitionKey]) -> None:
        # Attempts already running go on and report; if their task comes back to us it is matched
        # to the running attempt, elsewhere it runs again and the processor keeps the first outcome.
        for key in keys:
            self._offsets.pop(key, None)
        for attempt_id, queued in list(self._backlog.items()):
            queued.positions = [p for p in queued.positions if p[0] not in keys]
            if not queued.positions:
                del self._backlog[attempt_id]
        self._paused = False
        self.stats.assigned_partitions = max(0, self.stats.assigned_partitions - len(keys))

    # ---- attempts --------------------------------------------------------------------------------
    def _start(self, attempt_id: str, queued: _Queued) -> None:
        task = queued.task
        stamps, resolved, problem = self._resolve(task)
        rollout = Rollout(
            self.client,
            task.input,
            rollout_id=task.rollout_id,
            attempt_id=attempt_id,
            attempt_number=task.attempt_number,
            resources=stamps,
            worker_id=self.worker_id,
            lifecycle_events=False,  # this runner reports them: lazily, and releases too
        )
        rollout.resolved = resolved
        rollout.mode = task.mode
        if problem is not None:
            rollout.fail(problem)
        attempt = _Attempt(task, attempt_id, rollout, queued.positions)
        with self._lock:
            self._inflight[attempt_id] = attempt
            self.stats.in_flight = len(self._inflight)
        self._heartbeat_wake.set()
        if self._loop is not None:
            attempt.handle = self._loop.submit(self._execute_async(attempt))
        else:
            assert self._pool is not None
            # a fresh context per attempt: nothing of one attempt's context leaks into the next
            self._pool.submit(contextvars.Context().run, self._execute_sync, attempt)

    def _resolve(self, task: Task) -> tuple[dict[str, str], dict[str, Any], str | None]:
        """Per resource: the pinned version, else the A/B label's version; prompt templates first
        (the first resource is what the rollout's spans are stamped with). Returns the stamps
        (name -> version), the resolved versions, and why the attempt cannot run (or ``None``).
        A pin on a resource the store does not manage is kept as an opaque stamp."""
        store = self.resources
        if store is None:
            return dict(task.resources), {}, None
        known = set(store.names())
        names = self.config.resources if self.config.resources is not None else sorted(known)
        key = task.metadata.get("task_key") or task.rollout_id
        resolved: dict[str, Any] = {}
        opaque = {name: pin for name, pin in task.resources.items() if name not in known}
        for name in dict.fromkeys([*task.resources, *names]):
            if name in opaque:
                continue
            pin = task.resources.get(name)
            if pin is not None:
                version = store.find(name, pin)
                if version is None:  # published a moment ago elsewhere: give the follower a moment
                    store.wait_for(lambda s, n=name, p=pin: s.find(n, p) is not None, timeout=5.0)
                    version = store.find(name, pin)
                if version is None:
                    return (
                        dict(task.resources),
                        resolved,
                        f"resource {name} pinned to {pin!r}, which does not exist",
                    )
            else:
                try:
                    labels = store.labels(name)
                except ResourceError:
                    continue
                label = pick_label(self.traffic, labels, traffic_bucket(key, name))
                if label is None:
                    continue  # nothing to offer (e.g. no production label yet)
                version = store.find(name, labels[label])
                if version is None:
                    continue
            resolved[name] = version
        ordered = dict(sorted(resolved.items(), key=lambda item: item[1].kind != "prompt_template"))
        stamps = {name: str(v.version) for name, v in ordered.items()}
        stamps.update(opaque)
        return stamps, ordered, None

    def _arguments(self, attempt: _Attempt) -> tuple[Any, ...]:
        task_input = orjson.loads(attempt.task.input)
        return (task_input, attempt.rollout) if self._pass_rollout else (task_input,)

    def _execute_sync(self, attempt: _Attempt) -> None:
        try:
            with attempt.rollout:
                if attempt.rollout.status == "failed":
                    raise _Unrunnable(attempt.rollout.error)
                result = self.agent(*self._arguments(attempt))
                if inspect.isawaitable(result):  # a sync callable that returned a coroutine
                    result = asyncio.run(_awaited(result))
                _emit_return_reward(result, attempt)
        except BaseException:  # the rollout recorded it as the attempt's error
            pass
        self._finish(attempt)

    async def _execute_async(self, attempt: _Attempt) -> None:
        try:
            async with attempt.rollout:
                if attempt.rollout.status == "failed":
                    raise _Unrunnable(attempt.rollout.error)
                result = await self.agent(*self._arguments(attempt))
                _emit_return_reward(result, attempt)
        except asyncio.CancelledError:
            pass  # released at shutdown: nothing is reported
        except Exception:  # the rollout recorded it as the attempt's error
            pass
        self._finish(attempt)

    def _finish(self, attempt: _Attempt) -> None:
        rollout = attempt.rollout
        status = rollout.status if rollout.status in ("succeeded", "failed") else "failed"
        with self._lock:
            if attempt.state != _RUNNING:
                return  # released: another runner owns the task now
            attempt.state = _FINISHED
            self._retire(attempt)
            if status == "succeeded":
                self.stats.succeeded += 1
            else:
                self.stats.failed += 1
            # Submitted under the lock, so no heartbeat of this attempt can follow it.
            self._report_outcome(
                attempt,
                RolloutEventType.ATTEMPT_FINISHED,
                status=status,
                error=rollout.error if status == "failed" else None,
            )
        self._slot_freed.set()

    def _report_outcome(self, attempt: _Attempt, kind: RolloutEventType, **fields: Any) -> None:
        """The attempt's final event; its task offset is committed once Kafka has it."""
        rollout = attempt.rollout
        self.client.emit_rollout_event(
            rollout.rollout_id,
            kind,
            attempt_id=attempt.attempt_id,
            attempt_number=rollout.attempt_number,
            worker_id=self.worker_id,
            resources=rollout.resources,
            started_at=attempt.started_at,
            llm_calls=rollout.llm_calls,
            input_tokens=rollout.input_tokens,
            output_tokens=rollout.output_tokens,
            on_delivered=functools.partial(self._delivered, attempt.outcome),
            **fields,
        )

    def _release_all(self) -> None:
        with self._lock:
            attempts = list(self._inflight.values())
            for attempt in attempts:
                attempt.state = _RELEASED
                self._retire(attempt)
                self.stats.released += 1
                self._report_outcome(
                    attempt,
                    RolloutEventType.ATTEMPT_RELEASED,
                    error=f"runner {self.worker_id} stopped before the attempt finished",
                )
        for attempt in attempts:
            if attempt.handle is not None:
                attempt.handle.cancel()  # async agents: stop the abandoned coroutine
        if attempts:
            logger.warning(
                "Runner %s: released %d unfinished attempt(s) after the %g s grace period",
                self.worker_id,
                len(attempts),
                self.config.shutdown_grace_seconds,
            )

    def _retire(self, attempt: _Attempt) -> None:
        """Move an attempt from in flight to recent (caller holds the lock)."""
        del self._inflight[attempt.attempt_id]
        self.stats.in_flight = len(self._inflight)
        self._undelivered += 1
        self._recent[attempt.attempt_id] = attempt.outcome
        while len(self._recent) > _RECENT_ATTEMPTS:
            self._recent.popitem(last=False)

    def _delivered(self, outcome: _Outcome) -> None:
        """Kafka acknowledged an attempt's outcome (delivery thread): its tasks may be committed."""
        with self._lock:
            outcome.delivered = True
            positions, outcome.positions = outcome.positions, []
            self._undelivered -= 1
        self._acks.put(positions)

    # ---- lazy start and heartbeats: one thread for all attempts ---------------------------------------
    def _heartbeats(self) -> None:
        lazy = self.config.lazy_start_seconds
        every = self.config.heartbeat_seconds
        while not self._heartbeat_stop.is_set():
            self._heartbeat_wake.clear()
            now = time.monotonic()
            next_due = now + 1.0
            with self._lock:
                for attempt in self._inflight.values():
                    if attempt.state != _RUNNING:
                        continue
                    if not attempt.started_sent:
                        due = attempt.t0 + lazy
                        if now >= due:
                            attempt.started_sent = True
                            attempt.last_beat = now
                            self._emit_progress(attempt, RolloutEventType.ATTEMPT_STARTED)
                            due = now + every
                    else:
                        due = attempt.last_beat + every
                        if now >= due:
                            attempt.last_beat = now
                            self._emit_progress(attempt, RolloutEventType.HEARTBEAT)
                            due = now + every
                    next_due = min(next_due, due)
            self._heartbeat_wake.wait(max(0.0, next_due - time.monotonic()))

    def _emit_progress(self, attempt: _Attempt, kind: RolloutEventType) -> None:
        rollout = attempt.rollout
        self.client.emit_rollout_event(
            rollout.rollout_id,
            kind,
            attempt_id=attempt.attempt_id,
            attempt_number=rollout.attempt_number,
            status="running",
            worker_id=self.worker_id,
            resources=rollout.resources,
            started_at=attempt.started_at,
        )


class _Unrunnable(RuntimeError):
    """An attempt that cannot start (e.g. its pinned resource version does not exist)."""


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
