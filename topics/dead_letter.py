"""Dead-letter records: what every consumer (the sink, the stream workers) sends to the dead-letter
topic when a record cannot be decoded, resolved, validated or written.

A dead letter is the source record (key, value, headers) plus headers naming the reason, the error
class, the source coordinates ``topic/partition/offset`` and the consumer. A record too big to be
copied (its dead letter would exceed the producer's ``message.max.bytes``) becomes a *reference*: its
value is JSON ``{"reference": true, "topic", "partition", "offset", "size", "sha256", "reason"}``, with
the header ``agentstream-dlq-reference: 1``; the original stays in its source topic.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from .catalogue import (
    HEADER_DLQ_CONSUMER,
    HEADER_DLQ_ERROR_CLASS,
    HEADER_DLQ_REASON,
    HEADER_DLQ_REFERENCE,
    HEADER_DLQ_SOURCE,
)

logger = logging.getLogger(__name__)

#: librdkafka's default ``message.max.bytes``
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
#: room for librdkafka's per-record overhead (record and batch headers) below ``message.max.bytes``
_OVERHEAD = 1024
_MAX_REASON = 2000
_MAX_KEY = 4096

Headers = list[tuple[str, bytes | None]]
#: how a dead letter is sent: ``send(key, value, headers)``
Send = Callable[[bytes | None, bytes | None, Headers], None]


def record_limit(producer_config: Mapping[str, Any]) -> int:
    """The largest record (key + value + headers) a producer with ``producer_config`` can send."""
    return int(producer_config.get("message.max.bytes", DEFAULT_MAX_MESSAGE_BYTES)) - _OVERHEAD


def record_size(key: bytes | None, value: bytes | None, headers: Headers | None = None) -> int:
    """Bytes a record takes against ``message.max.bytes`` (without librdkafka's overhead)."""
    size = len(key or b"") + len(value or b"")
    for name, header in headers or ():
        size += len(name) + len(header or b"") + 8
    return size


@dataclass(frozen=True)
class Source:
    """Where the dead-lettered record is."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True)
class DeadLetter:
    """One record for the dead-letter topic."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    reference: bool = False


def _header_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def build(
    *,
    source: Source,
    key: bytes | None,
    value: bytes | None,
    headers: Any,
    reason: str,
    error_class: str,
    consumer: str,
    limit: int = DEFAULT_MAX_MESSAGE_BYTES - _OVERHEAD,
) -> DeadLetter:
    """The dead letter of a source record: the record itself with the reason headers, or its
    reference when that would exceed ``limit`` bytes (see :func:`record_limit`)."""
    if isinstance(headers, Mapping):
        headers = list(headers.items())
    source_headers: Headers = [(str(n), _header_bytes(v)) for n, v in headers or ()]
    reason = reason[:_MAX_REASON]
    ours: Headers = [
        (HEADER_DLQ_REASON, reason.encode()),
        (HEADER_DLQ_ERROR_CLASS, error_class.encode()),
        (HEADER_DLQ_SOURCE, str(source).encode()),
        (HEADER_DLQ_CONSUMER, consumer.encode()),
    ]
    letter = DeadLetter(key, value, source_headers + ours)
    if record_size(letter.key, letter.value, letter.headers) <= limit:
        return letter
    return reference(letter, source, reason)


def reference(letter: DeadLetter, source: Source, reason: str) -> DeadLetter:
    """The reference form of ``letter`` (whose value is the source record's)."""
    value = letter.value or b""
    body = {
        "reference": True,
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "size": len(value),
        "sha256": hashlib.sha256(value).hexdigest(),
        "reason": reason[:_MAX_REASON],
    }
    ours = [(n, v) for n, v in letter.headers if n.startswith("agentstream-dlq-")]
    key = letter.key if letter.key is None or len(letter.key) <= _MAX_KEY else None
    return DeadLetter(
        key,
        json.dumps(body, separators=(",", ":")).encode(),
        [*ours, (HEADER_DLQ_REFERENCE, b"1")],
        reference=True,
    )


def is_too_large(error: BaseException) -> bool:
    """``error`` is librdkafka refusing a record for its size."""
    if not isinstance(error, KafkaException) or not error.args:
        return False
    code = error.args[0].code() if isinstance(error.args[0], KafkaError) else None
    return code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE)


def send(letter: DeadLetter, source: Source, send_record: Send) -> DeadLetter:
    """Send ``letter``; when the producer refuses it for its size, send its reference instead.
    Returns what was sent."""
    try:
        send_record(letter.key, letter.value, letter.headers)
        return letter
    except KafkaException as e:
        if letter.reference or not is_too_large(e):
            raise
    reason = dict(letter.headers).get(HEADER_DLQ_REASON) or b""
    sent = reference(letter, source, reason.decode("utf-8", "replace"))
    send_record(sent.key, sent.value, sent.headers)
    return sent


def log(letter: DeadLetter, source: Source, reason: str, who: str) -> None:
    """The one log line of a dead letter."""
    logger.warning(
        "Data error: %s: %s to the dead-letter topic%s: %s",
        who,
        source,
        " (as a reference: too large)" if letter.reference else "",
        reason[:500],
    )
