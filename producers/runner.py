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

Here: the consumer side (group membership, the backlog, commits); :mod:`.attempts` runs and
reports the attempts, :mod:`.agent_calls` calls the agent, :mod:`.task_offsets` decides what
may be committed, :mod:`.resource_choice` picks each attempt's resource versions.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from agentstream.resources.store import ResourceStore
from agentstream.schemas import AvroDeserializer, SchemaStore, Task, attempt_id_for
from agentstream.settings import Settings
from agentstream.topics.catalogue import SCHEMAS, TASKS
from agentstream.topics.schema_resolver import SchemaTopicResolver

from .attempts import Attempts, RunnerStats
from .client import AgentStream, resolve_settings
from .metrics import start_runner_ops
from .resource_choice import Resolution, choose_resources
from .sdk import initialised_client
from .task_offsets import Position, TaskOffsets, TopicPartitionKey

logger = logging.getLogger(__name__)

__all__ = ["Runner", "RunnerStats", "default_worker_id"]

_POLL_TIMEOUT = 0.05


@dataclass
class _Queued:
    task: Task
    positions: list[Position]


def default_worker_id() -> str:
    """``<host>-<pid>-<random>``: what a runner reports as its worker id unless given one."""
    return f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(16):04x}"


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
        if client is None and settings is None:
            client = initialised_client()
        # Settings are resolved here, once: the client and the store get them resolved.
        self.settings = (
            client.settings if settings is None and client is not None else resolve_settings(settings)
        )
        self.config = self.settings.runner
        self.concurrency = concurrency if concurrency is not None else self.config.concurrency
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        self._owns_client = client is None
        self.client = client if client is not None else AgentStream(self.settings)
        # Tasks received ahead of a free slot: measured on the embedded broker with 10 ms tasks,
        # 4 slots ran 78 tasks/s with none waiting, 141/s with 4 (a freed slot need not wait for
        # a fetch). They are tasks of our own partitions, which no other runner could take anyway.
        self._prefetch = self.concurrency
        self.worker_id = worker_id or default_worker_id()
        self.agent = agent
        self.stats = RunnerStats()
        self.topic = self.settings.topic(TASKS.name)
        self.traffic = dict(traffic if traffic is not None else self.config.traffic)
        self._owns_store = resources is True
        self.resources: ResourceStore | None = (
            ResourceStore(self.settings, who=self.worker_id) if resources is True else (resources or None)
        )

        self._offsets = TaskOffsets(self.worker_id)
        self._attempts = Attempts(
            agent,
            self.client,
            self.worker_id,
            self.config,
            self.stats,
            self._resolve,
            self._offsets.acknowledged,
        )
        self.is_async = self._attempts.is_async
        self._backlog: OrderedDict[str, _Queued] = OrderedDict()
        self._paused = False

        self._stop_requested = threading.Event()
        self._force = threading.Event()
        self._finished = threading.Event()
        self._running = False
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

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
        ops = start_runner_ops(self)  # /metrics, /healthz, /readyz while it runs
        try:
            try:
                self._open()
                while not self._stop_requested.is_set():
                    self._step()
            finally:
                self._shutdown()
        finally:
            restore()
            if ops is not None:
                ops.stop()
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
        self._attempts.open(self.concurrency)
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
                while self._attempts.count() and time.monotonic() < deadline and not self._force.is_set():
                    self._idle_poll()
            self._attempts.release_all()
            if consumer is not None:
                # Commit what finished, once its outcome (or release) is acknowledged by Kafka.
                deadline = time.monotonic() + self.settings.sdk.delivery_timeout_ms / 1_000 + 2.0
                while self._attempts.undelivered > 0 and time.monotonic() < deadline:
                    self._idle_poll()
                if self._attempts.undelivered > 0:
                    logger.warning(
                        "Runner %s: %d outcome event(s) not acknowledged by Kafka; their tasks stay uncommitted",
                        self.worker_id,
                        self._attempts.undelivered,
                    )
                self._offsets.drain_acks()
                self._offsets.commit(consumer, sync=True)
        finally:
            if consumer is not None:
                try:
                    consumer.close()
                except Exception as e:  # closing must not hide the shutdown's result
                    logger.warning("Runner %s: closing the consumer failed: %s", self.worker_id, e)
                self._consumer = None
            self._attempts.close()
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
        self._offsets.drain_acks()
        self._dispatch()
        # Up to `_prefetch` tasks wait in a local backlog besides those running.
        room = self.concurrency + self._prefetch - self._attempts.count() - len(self._backlog)
        if room <= 0:
            self._set_paused(True)
        elif self._paused and len(self._backlog) <= self._prefetch // 2:
            self._set_paused(False)
        if self._backlog and self._attempts.count() >= self.concurrency:
            # Tasks wait for a slot: wake when an attempt finishes rather than after a poll timeout.
            for message in self._consumer.consume(num_messages=max(room, 1), timeout=0):
                self._receive(message)
            self._attempts.slot_freed.wait(_POLL_TIMEOUT)
            self._attempts.slot_freed.clear()
        else:
            for message in self._consumer.consume(num_messages=max(room, 1), timeout=_POLL_TIMEOUT):
                self._receive(message)
        self._dispatch()
        self._offsets.maybe_commit(self._consumer)

    def _idle_poll(self) -> None:
        """Keep group membership and commits going while not taking tasks (shutdown)."""
        assert self._consumer is not None
        # Anything still fetched is dropped unrecorded: its offset is never committed here.
        self._consumer.consume(num_messages=1, timeout=_POLL_TIMEOUT)
        self._offsets.drain_acks()
        self._offsets.maybe_commit(self._consumer)

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
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            return  # only errors come without them
        key = (topic, partition)
        part = self._offsets.received(key, offset)
        self.stats.received += 1
        try:
            value = message.value()
            if value is None:
                raise ValueError("the task record has no value")
            task = Task.from_avro(self._deserializer(value))
        except Exception as e:
            logger.error("Data error: skipping undecodable task at %s[%d]@%d: %s", key[0], key[1], offset, e)
            self.stats.skipped += 1
            part.done(offset)
            return
        attempt_id = attempt_id_for(task.rollout_id, task.attempt_number)
        position = (key, offset)
        answered = self._attempts.match(attempt_id, position)
        if answered is not None:
            # Redelivered (a rebalance came before the commit): answered by the run we have.
            self.stats.skipped += 1
            if answered:
                part.done(offset)
            return
        queued = self._backlog.get(attempt_id)
        if queued is not None:
            queued.positions.append(position)
        else:
            self._backlog[attempt_id] = _Queued(task, [position])

    def _dispatch(self) -> None:
        while (
            self._backlog and not self._stop_requested.is_set() and self._attempts.count() < self.concurrency
        ):
            attempt_id, queued = self._backlog.popitem(last=False)
            self._attempts.start(queued.task, attempt_id, queued.positions)

    # ---- rebalances (called inside consume(), on the loop thread) ---------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._offsets.assigned([(tp.topic, tp.partition) for tp in partitions])
        # a new assignment starts unpaused; the next step pauses it again if we are full
        self._paused = False
        self.stats.assigned_partitions = len(partitions)  # eager assignor: the whole assignment
        logger.info("Runner %s: assigned %s", self.worker_id, sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._offsets.drain_acks()
        self._offsets.commit(self._consumer, sync=True, only=keys)
        self._forget(keys)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget({(tp.topic, tp.partition) for tp in partitions})

    def _forget(self, keys: set[TopicPartitionKey]) -> None:
        # Attempts already running go on and report; if their task comes back to us it is matched
        # to the running attempt, elsewhere it runs again and the processor keeps the first outcome.
        self._offsets.forget(keys)
        for attempt_id, queued in list(self._backlog.items()):
            queued.positions = [p for p in queued.positions if p[0] not in keys]
            if not queued.positions:
                del self._backlog[attempt_id]
        self._paused = False
        self.stats.assigned_partitions = max(0, self.stats.assigned_partitions - len(keys))

    # ---- attempts --------------------------------------------------------------------------------
    def _resolve(self, task: Task) -> Resolution:
        """The resource versions of an attempt at ``task`` (see :func:`choose_resources`)."""
        return choose_resources(self.resources, self.config.resources, self.traffic, task)
