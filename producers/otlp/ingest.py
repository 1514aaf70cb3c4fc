"""The one path from normalised OTLP records to Kafka: :class:`OtlpIngest`.

The HTTP and gRPC receivers, the Collector-topic consumer and ``agentstream import`` all publish
through it. A batch is encoded on the caller's thread (Avro, with the SDK's serializers, truncation
and redaction: :class:`~agentstream.producers.records.RecordEncoder`), produced with the SDK's
idempotent ``acks=all`` producer settings, and its :class:`~concurrent.futures.Future` resolves once
Kafka acknowledged every record of it: a receiver answers the exporter only then, so an OTLP success
means the data is in the log (never a silent drop). Items the normaliser rejected go to the
dead-letter topic with their reason, in the same batch.

Back-pressure: a batch that would take more than ``otlp.max_in_flight`` records not yet acked, or
that librdkafka's queue cannot take, raises :class:`IngestBusy` (HTTP 429 / gRPC RESOURCE_EXHAUSTED
with a retry hint), so memory stays bounded whatever the exporters send.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer

from agentstream.producers.records import RecordEncoder, _sanitized
from agentstream.producers.redaction import build_redactor
from agentstream.schemas import SerializationError
from agentstream.topics import dead_letter
from agentstream.topics.catalogue import DEAD_LETTER, HEADER_EVENT_ID, SCHEMAS

if TYPE_CHECKING:
    from agentstream.settings import Settings

    from .decode import OtlpLogRecord, OtlpSpan
    from .dialects import Normalised, Rejected

logger = logging.getLogger(__name__)

#: the dead letter's error class for what the normaliser rejected
REJECTED_CLASS = "OtlpRejected"


class IngestBusy(Exception):
    """The ingest cannot take this batch now (too many records wait for Kafka): retry later."""


@dataclass
class IngestResult:
    """What a published batch became, once Kafka acknowledged it."""

    accepted_spans: int = 0
    accepted_rewards: int = 0
    rejected: list[Rejected] = field(default_factory=list)


class _Batch:
    """One published batch: resolves its future when the last of its records is acknowledged."""

    __slots__ = ("future", "pending", "result", "error", "refused")

    def __init__(self, result: IngestResult, pending: int) -> None:
        self.future: Future[IngestResult] = Future()
        self.pending = pending
        self.result = result
        self.error: KafkaError | None = None
        #: why part of the batch was never produced (the caller was told: busy, or refused)
        self.refused: Exception | None = None


class _Encoder(RecordEncoder):
    """The SDK's encoder, fed normalised datums (with their own resource attributes) instead of the
    agent's spans."""

    def span_value(self, datum: dict[str, Any]) -> bytes:
        if self.redactor is not None:
            datum = self._redact_span(datum, self.redactor)
        try:
            value = self._span(datum, self._span_ctx)
        except SerializationError:  # values of the wrong type: coerced (and marked), as the SDK does
            datum = _sanitized(datum)
            value = self._span(datum, self._span_ctx)  # may raise: the caller rejects the span
        if len(value) > self.max_record_bytes:
            value = self._truncate(datum)
        return value


@dataclass(slots=True)
class Encoded:
    """A batch encoded for Kafka (:func:`encode_batch`): what a pool worker hands back."""

    records: list[tuple[str, bytes | None, bytes | None, Any]]  # (topic, value, key, headers)
    spans: int
    rewards: int
    rejected: list[Rejected]


def encode_batch(encoder: _Encoder, normalised: Normalised) -> Encoded:
    """The Kafka records of ``normalised``'s spans and rewards; what cannot be encoded is rejected.
    Pure (no Kafka): it runs in the ingest's worker processes."""
    rejected = list(normalised.rejected)
    records: list[tuple[str, bytes | None, bytes | None, Any]] = []
    spans = rewards = 0
    span_value, span_topic = encoder.span_value, encoder.span_topic
    for datum in normalised.spans:
        try:
            value = span_value(datum)
        except (SerializationError, ValueError, TypeError, KeyError) as e:
            rejected.append(_rejected(f"span not encodable: {e}", "span", str(datum.get("span_id"))))
            continue
        key = (datum["rollout_id"] or datum["trace_id"]).encode()
        records.append((span_topic, value, key, [(HEADER_EVENT_ID, datum["span_id"].encode())]))
        spans += 1
    for datum in normalised.rewards:
        try:
            record = encoder.reward(datum)
        except (SerializationError, ValueError, TypeError, KeyError) as e:
            rejected.append(_rejected(f"reward not encodable: {e}", "reward", str(datum.get("reward_id"))))
            continue
        records.append((record.topic, record.value, record.key, list(record.headers)))
        rewards += 1
    return Encoded(records, spans, rewards, rejected)


def make_encoder(settings: Settings) -> _Encoder:
    """The ingest's record encoder (the SDK's serializers, truncation and ``sdk.redact``)."""
    return _Encoder(settings, {}, build_redactor(settings.sdk.redact, settings.sdk.redact_recognizers))


class OtlpIngest:
    """Publishes normalised OTLP batches to the spans and rewards topics; thread-safe.

    Args:
        settings: resolved settings (``bootstrap_servers`` set); ``otlp.max_in_flight`` bounds the
            records waiting for Kafka, ``sdk.redact`` redacts message content as the SDK does.
        client_name: the Kafka ``client.id`` and the dead letters' consumer name.
    """

    def __init__(self, settings: Settings, *, client_name: str = "otlp") -> None:
        self.settings = settings
        self.client_name = client_name
        self.max_in_flight = settings.otlp.max_in_flight
        self.encoder = self._encoder = make_encoder(settings)
        self._dead_letter_topic = settings.topic(DEAD_LETTER.name)
        config = settings.producer_config(**{"client.id": client_name})
        self.record_limit = dead_letter.record_limit(config)
        self._producer = Producer(config)
        self._lock = threading.Lock()
        self._in_flight = 0
        #: counters for /metrics: records acknowledged, rejected items, batches refused as busy
        self.acked_spans = 0
        self.acked_rewards = 0
        self.rejected = 0
        self.busy = 0
        self.failed = 0
        self._closed = threading.Event()
        if not settings.schema_registry_url:  # readers find our writer schemas by fingerprint there
            schemas_topic = settings.topic(SCHEMAS.name)
            for schema in self._encoder.schemas[:2]:
                self._producer.produce(schemas_topic, schema.json.encode(), schema.fingerprint.hex().encode())
        self._poller = threading.Thread(target=self._poll, name=f"{client_name}-acks", daemon=True)
        self._poller.start()

    # ---- publishing -------------------------------------------------------------------------------
    def publish(
        self,
        normalised: Normalised,
        *,
        source: dead_letter.Source | None = None,
        dead_letters: Sequence[dead_letter.DeadLetter] = (),
    ) -> Future[IngestResult]:
        """Produce ``normalised`` (and dead letters for its rejected items); non-blocking.

        Args:
            normalised: the normaliser's output.
            source: where the batch came from, named in dead letters (a Collector topic's record);
                default ``otlp:<client_name>``.
            dead_letters: more dead letters to send with the batch (e.g. an undecodable record).

        Returns:
            A future that resolves once Kafka acknowledged every record of the batch, or fails with
            the ``KafkaException`` of the first record it refused.

        Raises:
            IngestBusy: too many records wait for Kafka, or librdkafka's queue is full.
        """
        return self.publish_encoded(
            encode_batch(self._encoder, normalised), source=source, dead_letters=dead_letters
        )

    def publish_encoded(
        self,
        encoded: Encoded,
        *,
        source: dead_letter.Source | None = None,
        dead_letters: Sequence[dead_letter.DeadLetter] = (),
    ) -> Future[IngestResult]:
        """:meth:`publish` for a batch already encoded (by :func:`encode_batch`, e.g. in a worker
        process of :class:`~.pool.IngestPool`); same arguments, result and errors."""
        rejected, records = encoded.rejected, list(encoded.records)
        spans, rewards = encoded.spans, encoded.rewards
        where = source or dead_letter.Source(f"otlp:{self.client_name}", -1, -1)
        letters = [*(self._dead_letter(item, where) for item in rejected), *dead_letters]
        for letter in letters:
            records.append((self._dead_letter_topic, letter.value, letter.key, letter.headers))
        batch = _Batch(IngestResult(spans, rewards, rejected), len(records))
        if not records:
            batch.future.set_result(batch.result)
            return batch.future
        with self._lock:
            # a batch larger than the bound still goes when nothing waits: it could never go otherwise
            if self._in_flight and self._in_flight + len(records) > self.max_in_flight:
                self.busy += 1
                raise IngestBusy(
                    f"{self._in_flight} records wait for Kafka (otlp.max_in_flight {self.max_in_flight})"
                )
            self._in_flight += len(records)
        produce = self._producer.produce
        on_delivery = functools.partial(self._delivered, batch)
        for index, (topic, payload, key, headers) in enumerate(records):
            try:
                produce(topic, payload, key, headers=headers, on_delivery=on_delivery)
            except BufferError as e:  # records produced so far are delivered, and harmless on retry
                batch.refused = IngestBusy("the Kafka producer's queue is full")
                self._abandon(batch, len(records) - index)
                self.busy += 1
                raise batch.refused from e
            except KafkaException as e:  # refused before sending (e.g. too large): fail the batch
                self.failed += 1
                batch.refused = e
                if self._abandon(batch, len(records) - index):
                    batch.future.set_exception(e)
                return batch.future
        return batch.future

    def publish_spans(self, spans: Iterable[OtlpSpan]) -> Future[IngestResult]:
        """Normalise ``spans`` (:func:`~.dialects.normalise_spans`) and :meth:`publish` them."""
        from .dialects import normalise_spans

        return self.publish(normalise_spans(spans))

    def publish_logs(self, logs: Iterable[OtlpLogRecord]) -> Future[IngestResult]:
        """Normalise ``logs`` (:func:`~.dialects.normalise_logs`) and :meth:`publish` them."""
        from .dialects import normalise_logs

        return self.publish(normalise_logs(logs))

    @property
    def in_flight(self) -> int:
        """Records produced and not yet acknowledged."""
        return self._in_flight

    def _dead_letter(self, item: Rejected, source: dead_letter.Source) -> dead_letter.DeadLetter:
        body = {"kind": item.kind, "ident": item.ident, "reason": item.reason}
        return dead_letter.build(
            source=source,
            key=item.ident.encode(),
            value=json.dumps(body).encode(),
            headers=(),
            reason=item.reason,
            error_class=REJECTED_CLASS,
            consumer=self.client_name,
            limit=self.record_limit,
        )

    # ---- acknowledgements (on the poller thread) ------------------------------------------------------
    def _delivered(self, batch: _Batch, err: KafkaError | None, msg: Any) -> None:
        with self._lock:
            self._in_flight -= 1
            batch.pending -= 1
            if err is not None and batch.error is None:
                batch.error = err
            done = batch.pending == 0
        if not done:
            return
        if batch.refused is not None:
            batch.future.set_exception(batch.refused)
            return
        if batch.error is not None:
            self.failed += 1
            logger.warning("OTLP batch not acknowledged by Kafka: %s", batch.error.str())
            batch.future.set_exception(KafkaException(batch.error))
            return
        result = batch.result
        self.acked_spans += result.accepted_spans
        self.acked_rewards += result.accepted_rewards
        self.rejected += len(result.rejected)
        batch.future.set_result(result)

    def _abandon(self, batch: _Batch, unsent: int) -> bool:
        """``unsent`` records of ``batch`` were never produced: stop waiting for them. True when no
        record of it waits for an acknowledgement any more."""
        with self._lock:
            self._in_flight -= unsent
            batch.pending -= unsent
            return batch.pending == 0

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    # ---- shutdown ---------------------------------------------------------------------------------
    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every produced record is acknowledged (or failed); False on timeout."""
        return self._producer.flush(timeout) == 0

    def close(self) -> None:
        """Flush, then stop the acknowledgement thread."""
        if self._closed.is_set():
            return
        self.flush()
        self._closed.set()
        self._poller.join(timeout=5)

    def __enter__(self) -> OtlpIngest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rejected(reason: str, kind: str, ident: str) -> Rejected:
    from .dialects import Rejected

    return Rejected(reason=reason, kind=kind, ident=ident)


__all__ = [
    "Encoded",
    "IngestBusy",
    "IngestResult",
    "OtlpIngest",
    "REJECTED_CLASS",
    "encode_batch",
    "make_encoder",
]
