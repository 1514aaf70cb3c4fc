"""Background delivery: emitting never blocks the agent.

The agent thread appends what it recorded to a bounded in-memory queue. One delivery thread
encodes it and hands it to an idempotent ``acks=all`` producer. When the broker is unreachable,
records go to the local spool and are replayed in order once the broker is back; records are
also spooled when the queue is full. The spool is bounded (``sdk.spool_max_bytes``; when full, the
newest records are dropped and counted) and unreadable spool segments are quarantined
(:mod:`.spool_replay`). A record Kafka refuses for itself (too large, invalid, a topic that does
not exist) is a data error: it goes to the dead-letter topic, and delivery goes on.

If the broker comes back having lost its log (a topic re-created with a new topic id, as with the
embedded memory-only broker), the records delivered during the last ``replay_window_seconds`` are
sent again (:mod:`.replay_window`). Every record that may be a duplicate carries the
``agentstream-replay`` header, so the sink can drop copies it already stored.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from agentstream.topics.auth import RefusalLog
from agentstream.topics.catalogue import HEADER_DLQ_REASON, HEADER_DLQ_SOURCE, HEADER_EVENT_ID

from .delivery_stats import DeliveryStats
from .replay_window import ReplayWindow, flagged
from .spool import SpooledRecord
from .spool_replay import SpoolKeeper
from .topic_probe import MissingTopics, topic_ids

__all__ = ["DeliveryStats", "DeliveryWorker"]

logger = logging.getLogger(__name__)

#: delivery errors that retrying cannot fix: the record goes to the dead-letter topic
_PERMANENT = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG}
_BATCH = 512
_IDLE_WAIT = 0.05
_PROBE_INTERVAL = 0.5


class DeliveryWorker:
    """One background thread delivering encoded records to Kafka, spooling during outages.

    Args:
        producer_config: librdkafka configuration (from ``Settings.producer_config()``).
        admin_config: configuration for topic checks (from ``Settings.admin_config()``).
        encode: turns a queued item into a record; runs on the delivery thread.
        topics: topics this worker writes to; delivery waits until they exist.
        spool_root: where outage spools live.
        name: spool directory prefix (the service name).
        spool_max_bytes: the most this worker keeps spooled on disk (0: no bound).
        queue_size: items buffered in memory before the agent thread spills to the spool.
        replay_window_seconds / replay_window_bytes: how much delivered data to keep for re-sending.
        schemas: ``(fingerprint_hex, schema_json)`` published once to the schemas topic.
    """

    def __init__(
        self,
        producer_config: dict[str, Any],
        admin_config: dict[str, Any],
        encode: Callable[[Any], SpooledRecord],
        topics: list[str],
        *,
        spool_root: Path,
        name: str,
        queue_size: int,
        replay_window_seconds: float,
        replay_window_bytes: int,
        dead_letter_topic: str,
        schemas_topic: str | None = None,
        schemas: Sequence[tuple[str, str]] = (),
        spool_max_bytes: int = 0,
    ) -> None:
        self._producer_config = {**producer_config, "error_cb": self._on_error}
        self._admin_config = admin_config
        self._encode = encode
        self._topics = list(
            dict.fromkeys([*topics, dead_letter_topic] + ([schemas_topic] if schemas_topic else []))
        )
        self._dead_letter_topic = dead_letter_topic
        self._schemas_topic = schemas_topic
        self._schemas = list(schemas)
        self._maxsize = queue_size
        self.stats = DeliveryStats()
        self._spools = SpoolKeeper(spool_root, name, spool_max_bytes, self.stats)

        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._idle = False
        self._busy = False
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._window = ReplayWindow(replay_window_seconds, replay_window_bytes, skip_topic=schemas_topic)
        self._producer: Producer | None = None
        self._connected = False
        self._topic_ids: dict[str, str] = {}
        self._other_topics: dict[str, bool] = {}  # spooled records' topics not ours: do they exist?
        self._inflight = 0
        self._purge_pending = False
        self._deferred_dead_letters: list[tuple[SpooledRecord, str]] = []
        self._waiting_logged = False
        self._refusals = RefusalLog(logger, self._producer_config, " Records are spooled meanwhile.")
        # event id (the agentstream-id header) -> callback run once Kafka acknowledged that record
        self._waiters: dict[bytes, Callable[[], None]] = {}
        self._thread = threading.Thread(target=self._run, name=f"agentstream-delivery-{name}", daemon=True)

    # ---- agent side: never blocks on the network --------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, item: Any) -> None:
        """Queue an item for delivery. Never raises, never waits on the broker."""
        if len(self._queue) >= self._maxsize:
            self._spill(item)
        else:
            self._queue.append(item)
        self.stats.submitted += 1
        if self._idle:
            self._wake.set()

    def on_delivered(self, event_id: str, callback: Callable[[], None]) -> None:
        """Run ``callback`` (on the delivery thread; it must be quick) once the record carrying
        ``event_id`` in its ``agentstream-id`` header is acknowledged by Kafka, whether it goes
        out directly or later from the spool. Register it before submitting the record."""
        self._waiters[event_id.encode()] = callback

    def _spill(self, item: Any) -> None:
        try:
            record = self._encode(item)
        except Exception as e:  # never into agent code
            logger.error("Data error: cannot encode %s for the spool: %s", type(item).__name__, e)
            return
        self._spool_append(record)

    def _spool_append(self, record: SpooledRecord) -> None:
        try:
            self._spools.append(flagged(record))
        except Exception as e:  # a full or unwritable disk...: never into agent code, never silent
            self.stats.last_error = f"spool: {e}"
            logger.error(
                "Spool: cannot write to %s, a record to %s is lost: %s", self._spools.root, record.topic, e
            )

    def _spool_pending(self) -> bool:
        return self._spools.pending()

    # ---- the delivery thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._spools.adopt_orphans()
            while True:
                if not self._connected:
                    if not self._recover():
                        break  # stopping while the broker is unreachable
                    continue
                if self._spool_pending():
                    self._replay_spools()
                    continue
                if not self._deliver_batch():
                    if self._stopping.is_set() and self._inflight == 0:
                        break
                    self._idle_wait()
        except Exception:  # pragma: no cover - a bug; keep the agent alive and data on disk
            logger.exception("agentstream delivery thread crashed; spooling what is queued")
        finally:
            self._drain_to_spool()
            self._stopped.set()

    def _idle_wait(self) -> None:
        self._idle = True
        if not self._queue:
            self._wake.wait(_IDLE_WAIT)
        self._wake.clear()
        self._idle = False
        self._poll(0)

    def _poll(self, timeout: float = 0) -> None:
        """Serve delivery callbacks, then do what they asked for.

        confluent-kafka forbids calling poll() from inside its callbacks, so callbacks only set
        flags and queue work; it is done here.
        """
        producer = self._producer
        if producer is None:
            return
        producer.poll(timeout)
        while self._purge_pending:
            # Hand everything librdkafka still holds back to us (via delivery callbacks), in order.
            self._purge_pending = False
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)
        while self._deferred_dead_letters:
            record, reason = self._deferred_dead_letters.pop(0)
            self._dead_letter(record, reason)

    def _deliver_batch(self) -> bool:
        self._busy = True
        try:
            n = 0
            queue = self._queue
            while queue and n < _BATCH and self._connected:
                item = queue.popleft()
                n += 1
                try:
                    record = self._encode(item)
                except Exception as e:
                    self._dead_letter_unencodable(item, e)
                    continue
                self._produce(record)
                if n % 32 == 0:
                    self._poll(0)
            self._poll(0)
            return n > 0
        finally:
            self._busy = False

    def _produce(self, record: SpooledRecord, respool: bool = True) -> None:
        """Hand ``record`` to the producer; if Kafka fails it, spool it (unless ``respool`` is
        False: a record replayed from the spool stays in its segment until that is released)."""
        assert self._producer is not None
        while True:
            try:
                # Delivery reports do not carry headers back, so each report gets its own record.
                self._producer.produce(
                    record.topic,
                    record.value,
                    record.key,
                    headers=list(record.headers),
                    on_delivery=functools.partial(self._on_delivery, record, respool),
                )
                self._inflight += 1
                return
            except BufferError:
                # librdkafka's own queue is full: serve callbacks, then retry or spool
                self._poll(0.05)
                if not self._connected:
                    if respool:
                        self._spool_append(record)
                    return
            except KafkaException as e:
                error = e.args[0] if e.args else None
                if self._refused(record, error):
                    return
                self._note_error(str(e))
                if respool:
                    self._spool_append(record)
                self._mark_disconnected(error)
                return

    # ---- callbacks (run inside poll/flush on the delivery thread) ---------------------------------
    def _on_delivery(self, record: SpooledRecord, respool: bool, err: KafkaError | None, msg: Any) -> None:
        self._inflight -= 1
        if err is None:
            self.stats.delivered += 1
            self._window.remember(record)
            if self._waiters:
                self._notify(record)
            return
        if self._refused(record, err):
            return
        self._note_error(f"{err.name()}: {err.str()}")
        self._refusals.note(err, f"topic {record.topic}")
        if respool:
            self._spool_append(record)
        self._mark_disconnected(err)

    def _refused(self, record: SpooledRecord, error: Any) -> bool:
        """Whether Kafka refused the record itself (too large, invalid), not for an outage; then it
        goes to the dead-letter topic (from the delivery loop: this may run inside a callback)."""
        if not isinstance(error, KafkaError) or error.code() not in _PERMANENT:
            return False
        self._deferred_dead_letters.append((record, f"{error.name()}: {error.str()}"))
        return True

    def _notify(self, record: SpooledRecord) -> None:
        for name, value in record.headers:
            if name == HEADER_EVENT_ID:
                callback = self._waiters.pop(value, None)
                if callback is not None:
                    try:
                        callback()
                    except Exception:  # never let a caller's callback stop delivery
                        logger.exception("agentstream delivery callback failed")
                return

    def _on_error(self, err: KafkaError) -> None:
        self._note_error(f"{err.name()}: {err.str()}")
        self._refusals.note(err)  # a wrong password: one clear ERROR naming broker and principal
        if err.code() == KafkaError._ALL_BROKERS_DOWN or err.fatal():
            self._mark_disconnected(err)

    def _note_error(self, text: str) -> None:
        self.stats.last_error = text

    def _mark_disconnected(self, err: Any) -> None:
        if not self._connected:
            return
        self._connected = False
        self.stats.connected = False
        self.stats.outages += 1
        logger.warning("Kafka unreachable (%s): spooling to %s until it is back", err, self._spools.root)
        self._purge_pending = True  # done by _poll(): this may run inside a callback

    # ---- recovery -----------------------------------------------------------------------------------
    def _recover(self) -> bool:
        """Wait for the broker and our topics, then reconnect. False if asked to stop meanwhile."""
        next_probe = 0.0
        while True:
            if self._stopping.is_set():
                return False
            if time.monotonic() >= next_probe:
                ids = self._probe_topics()
                if ids is not None:
                    break
                next_probe = time.monotonic() + _PROBE_INTERVAL
            # Move queued records to disk promptly: held in memory they would outlive several GC
            # generations and make the host's full collections slower.
            self._spool_queue()
            if self._stopping.wait(0.05):
                return False
        lost_log = bool(self._topic_ids) and any(
            self._topic_ids.get(t) != ids.get(t) for t in self._topic_ids
        )
        first_connect = not self._topic_ids
        self._topic_ids = ids
        self._other_topics = {}
        self._spools.outage_over()
        # A fresh producer: a broker that restarted does not know the old idempotent producer id.
        if self._producer is not None:
            self._purge_pending = True
            self._poll(0)
        self._producer = Producer(self._producer_config)
        self._connected = True
        self.stats.connected = True
        self._waiting_logged = False
        logger.info("Kafka reachable: delivering to %s", ", ".join(self._topics))
        if first_connect or lost_log:
            self._publish_schemas()
        if lost_log and self._window:
            window = self._window.take()
            logger.warning(
                "Kafka lost its log (topics re-created): re-sending the last %d delivered records",
                len(window),
            )
            self.stats.window_replays += 1
            for record in window:
                if not self._connected:
                    self._spool_append(record)
                    continue
                self._produce(flagged(record))
                if self._inflight % 64 == 0:
                    self._poll(0)
        return True

    def _probe_topics(self) -> dict[str, str] | None:
        try:
            return topic_ids(self._admin_config, self._topics)
        except MissingTopics as e:
            if not self._waiting_logged:
                logger.warning("Kafka is up but %s; run `agentstream topics create`", e)
                self._waiting_logged = True
        except Exception as e:
            self._note_error(f"probe: {e}")
            self._refusals.note(e)
        return None

    def _publish_schemas(self) -> None:
        if not self._schemas_topic or not self._schemas:
            return
        assert self._producer is not None
        for fingerprint_hex, schema_json in self._schemas:
            self._produce(SpooledRecord(self._schemas_topic, fingerprint_hex.encode(), schema_json.encode()))
        self._poll(0)

    def _spool_queue(self) -> None:
        """While disconnected, move queued items to the spool so memory stays bounded."""
        queue = self._queue
        while queue:
            item = queue.popleft()
            try:
                self._spool_append(self._encode(item))
            except Exception as e:
                self._dead_letter_unencodable(item, e)

    def _replay_spools(self) -> None:
        """Deliver spooled records, oldest first (see :meth:`.SpoolKeeper.replay`)."""
        if self._spools.replay(self._send_spooled, self._settle):
            self._spools.outage_over()

    def _send_spooled(self, record: SpooledRecord) -> None:
        if not self._connected:
            return  # the segment keeps it for the next replay
        if not self._topic_exists(record.topic):
            self._dead_letter(record, f"topic {record.topic} does not exist")
            return
        self._produce(record, respool=False)
        if self._inflight % 64 == 0:
            self._poll(0)

    def _settle(self) -> bool:
        """Wait until every record handed to Kafka is acknowledged, dead-lettered or failed;
        whether Kafka is still reachable."""
        self._poll(0)
        while self._inflight > 0 and self._connected:
            self._poll(0.05)
        return self._connected

    def _topic_exists(self, topic: str) -> bool:
        """Whether a spooled record's topic exists. A spool adopted from another setup (another
        topic prefix) may hold records for topics this cluster lacks: they would wait for metadata
        until they time out, be taken for an outage, and be replayed forever."""
        if topic in self._topics:
            return True
        exists = self._other_topics.get(topic)
        if exists is None:
            try:
                topic_ids(self._admin_config, [topic])
                exists = True
            except MissingTopics:
                exists = False
            except Exception:  # unreachable now: let delivery find out, as for any record
                return True
            self._other_topics[topic] = exists
        return exists

    # ---- dead letters -------------------------------------------------------------------------------
    def _dead_letter(self, record: SpooledRecord, reason: str) -> None:
        logger.error("Data error: %s record to the dead-letter topic: %s", record.topic, reason)
        self.stats.dead_lettered += 1
        headers = (
            *record.headers,
            (HEADER_DLQ_REASON, reason.encode()),
            (HEADER_DLQ_SOURCE, f"{record.topic}".encode()),
        )
        value = record.value if len(record.value) < 900_000 else record.value[:900_000]
        self._produce(SpooledRecord(self._dead_letter_topic, record.key, value, headers))

    def _dead_letter_unencodable(self, item: Any, error: Exception) -> None:
        self._dead_letter(
            SpooledRecord("sdk", None, repr(item)[:100_000].encode(), ()),
            f"cannot encode {type(item).__name__}: {type(error).__name__}: {error}",
        )

    # ---- flush and shutdown -----------------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is delivered. False on timeout (data stays spooled)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._stopped.is_set():
                return not self._queue and not self._spool_pending()
            if (
                self._connected
                and not self._queue
                and not self._busy
                and self._inflight == 0
                and not self._spool_pending()
            ):
                return True
            self._wake.set()
            time.sleep(0.005)
        return False

    def close(self, timeout: float = 10.0) -> bool:
        """Flush, stop the thread, and keep anything undelivered in the spool for the next run."""
        # Disconnected: do not wait for a broker that may not come back; the spool keeps everything.
        delivered = self.flush(timeout) if self._thread.is_alive() and self._connected else False
        self._stopping.set()
        self._wake.set()
        # The thread may be inside a broker probe (bounded by its own timeout) before it drains.
        self._thread.join(timeout=timeout + 5.0)
        if self._thread.is_alive():
            logger.error(
                "agentstream delivery thread did not stop; %d queued records are lost", len(self._queue)
            )
        self._spools.close()
        return delivered

    def _drain_to_spool(self) -> None:
        producer = self._producer
        if producer is not None:
            producer.flush(2.0 if self._connected else 0)
            if self._inflight:
                self._purge_pending = True
        self._connected = False
        self._poll(0)
        self._spool_queue()
        self._spools.flush()
