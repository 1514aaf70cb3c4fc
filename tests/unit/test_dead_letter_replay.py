"""Dead-letter filters, their SQL and the headers of a re-driven record, without a broker."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agentstream.analytics.dead_letters import DeadLetterFilter, parse_id
from agentstream.producers.dead_letter_replay import (
    DeadLetter,
    parse_reference,
    replay_headers,
)
from agentstream.topics.catalogue import (
    HEADER_DLQ_CONSUMER,
    HEADER_DLQ_ERROR_CLASS,
    HEADER_DLQ_REASON,
    HEADER_DLQ_REFERENCE,
    HEADER_DLQ_REPLAY_OF,
    HEADER_DLQ_SOURCE,
    HEADER_EVENT_ID,
    HEADER_REPLAY,
)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"source_topic": "rewards' OR 1=1 --"}, "source_topic"),
        ({"consumer": "sink; DROP TABLE dead_letters"}, "consumer"),
        ({"error_class": "Bad Class"}, "error_class"),
        ({"since": "yesterday"}, "not a time"),
        ({"since": "2030-01-01", "until": "2020-01-01"}, "since must be before until"),
        ({"ids": ["0/1", "1' OR '1"]}, "not a dead-letter id"),
        ({"ids": ["-1/4"]}, "not a dead-letter id"),
        ({"source_offsets": [-3]}, "not negative"),
        ({"bucket": "toStartOfYear"}, "bucket"),
        ({"limit": 0}, "limit"),
        ({"colour": "red"}, "colour"),
        ({"replayed": "maybe"}, "replayed"),
    ],
)
def test_bad_filters_are_refused_before_any_query(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        DeadLetterFilter.model_validate(values)
    assert message in str(raised.value)


def test_filter_values_are_bound_parameters_never_sql_text() -> None:
    where = DeadLetterFilter.model_validate(
        {
            "source_topic": "p.rewards",
            "consumer": "agentstream-sink",
            "error_class": "UnknownSchemaError",
            "since": "2025-01-01T00:00:00",
            "until": "2025-02-01",
            "replayed": "false",
            "ids": ["0/7", " 1/9 "],
            "source_offsets": [3, 4],
        }
    )
    sql, parameters = where.where()
    for value in ("p.rewards", "agentstream-sink", "UnknownSchemaError", "0/7", "2025"):
        assert value not in sql
    assert parameters["source_topic"] == "p.rewards" and parameters["consumer"] == "agentstream-sink"
    assert parameters["ids"] == ["0/7", "1/9"] and parameters["source_offsets"] == [3, 4]
    assert "{source_topic:String}" in sql and "{since:DateTime64(6, 'UTC')}" in sql
    assert "r.first_replayed_at IS NULL" in sql
    assert DeadLetterFilter().where() == ("1", {})


def test_query_string_keeps_the_filters_for_links() -> None:
    where = DeadLetterFilter.model_validate({"consumer": "agentstream-sink", "bucket": "day"})
    assert where.query_string(offset=50) == "consumer=agentstream-sink&bucket=day&offset=50"


def test_parse_id() -> None:
    assert parse_id("0/42") == (0, 42)
    assert parse_id(" 3/0 ") == (3, 0)
    for bad in ("42", "0/", "/1", "a/b", "0/1/2", "0/-1"):
        with pytest.raises(ValueError, match="partition/offset"):
            parse_id(bad)


def test_a_redriven_record_keeps_its_headers_without_the_dead_letter_ones() -> None:
    original = [
        (HEADER_EVENT_ID, b"rw-1"),
        ("traceparent", b"00-abc"),
        (HEADER_DLQ_REASON, b"unknown writer schema"),
        (HEADER_DLQ_ERROR_CLASS, b"UnknownSchemaError"),
        (HEADER_DLQ_SOURCE, b"p.rewards/0/5"),
        (HEADER_DLQ_CONSUMER, b"agentstream-sink"),
        (HEADER_DLQ_REFERENCE, b"1"),
        (HEADER_DLQ_REPLAY_OF, b"p.dead-letter/0/1"),  # replayed before, failed again
        (HEADER_REPLAY, b"1"),
        ("empty", None),
    ]
    headers = replay_headers(original, "p.dead-letter/0/9")
    assert headers == [
        (HEADER_EVENT_ID, b"rw-1"),
        ("traceparent", b"00-abc"),
        ("empty", b""),
        (HEADER_REPLAY, b"1"),
        (HEADER_DLQ_REPLAY_OF, b"p.dead-letter/0/9"),
    ]
    # the ClickHouse copy holds headers as text
    assert replay_headers({"a": "b"}.items(), "x/0/1")[0] == ("a", b"b")


def test_reference_values() -> None:
    value = {"reference": True, "topic": "p.spans", "partition": 1, "offset": 7, "size": 5_000_000,
             "sha256": "AB" * 32, "reason": "too big"}  # fmt: skip
    reference = parse_reference(json.dumps(value).encode())
    assert (reference.topic, reference.partition, reference.offset, reference.size) == (
        "p.spans",
        1,
        7,
        5_000_000,
    )
    assert reference.sha256 == "ab" * 32
    for bad in (b"not json", b"[]", json.dumps({**value, "reference": False}).encode(),
                json.dumps({**value, "offset": "7"}).encode(), json.dumps({**value, "partition": True}).encode(),
                b"\xff\xfe"):  # fmt: skip
        with pytest.raises(ValueError, match="not a dead-letter reference"):
            parse_reference(bad)


def test_dead_letter_identity() -> None:
    dead = DeadLetter("tid", 0, 12, "p.rewards", 1, 99, "agentstream-sink", "E", "why", "k", b"v",
                      {HEADER_DLQ_REFERENCE: "1"})  # fmt: skip
    assert dead.id == "0/12" and dead.source == "p.rewards/1/99" and dead.is_reference
    assert not DeadLetter("tid", 0, 1, "t", 0, 0, "c", "E", "r", None, b"").is_reference
