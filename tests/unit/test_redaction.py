"""PII redaction: what the built-in recognisers catch, what they leave alone, and how it plugs in."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from agentstream.producers.redaction import (
    Finding,
    Redactor,
    build_redactor,
    builtin_recognizers,
    count_attributes,
    load_recognizers,
    luhn,
)

REDACTOR = Redactor(builtin_recognizers())

POSITIVES = [
    ("mail me at jane.doe+bills@example.co.uk today", "mail me at <EMAIL> today", "email"),
    ("From: Bob_Smith@mail.example.com", "From: <EMAIL>", "email"),
    ("<bob@example.org>", "<<EMAIL>>", "email"),
    ("call me on +44 20 7946 0958.", "call me on <PHONE>.", "phone"),
    ("my cell: +1 (555) 123-4567", "my cell: <PHONE>", "phone"),
    ("reach the desk at (555) 123-4567 any time", "reach the desk at <PHONE> any time", "phone"),
    ("555-123-4567", "<PHONE>", "phone"),
    ("+4915112345678", "<PHONE>", "phone"),
    ("phone 030 1234 5678", "phone <PHONE>", "phone"),
    ("call 06 12 34 56 78 tonight", "call <PHONE> tonight", "phone"),
    ("mobile 555.123.4567", "mobile <PHONE>", "phone"),
    ("card 4111 1111 1111 1111 exp 12/27", "card <CARD> exp 12/27", "card"),
    ("4111-1111-1111-1111", "<CARD>", "card"),
    ("pay with 5555555555554444", "pay with <CARD>", "card"),
    ("amex 3782 822463 10005", "amex <CARD>", "card"),
]

NEGATIVES = [
    "request 123e4567-e89b-12d3-a456-426614174000 failed",  # a UUID
    "id 12345678-1234-5678-1234-567812345678",  # an all-digit UUID
    "at 2024-05-01T12:34:56.789012+00:00 the job ran",  # ISO timestamp
    "2024-05-01 12:34:56",
    "on 01.02.2024 and 05/01/2024",  # dates, even near a context word: "call"
    "call at 01.02.2024",
    "epoch 1714567890123 ms, 1714567890123456 us",  # epoch times (13 and 16 digits)
    "total $1,299.99 or 1 299,99 EUR, USD 12,345,678.90",  # prices
    "order ORD-2024-001234, order #100234567, ticket 4000123",  # order numbers
    "invoice 4111111111111112",  # 16 digits failing Luhn
    "version 1.2.3, v10.0.19045.3803, python 3.11.4",  # versions
    "host 192.168.100.200 port 8080",  # an IP address
    "icon@2x.png and logo@3x.jpg",  # file names
    "git@github.com:org/repo.git",  # an ssh remote
    "@decorator and user@localhost",
    "555 123 4567",  # a phone shape with no context: too weak alone
    "dial 0800",  # too few digits
    "isbn 978-3-16-148410-0",
    "+05:30 and UTC+1",
]


@pytest.mark.parametrize(("text", "expected", "entity"), POSITIVES)
def test_positives_are_redacted(text: str, expected: str, entity: str) -> None:
    redacted, counts = REDACTOR.redact_text(text)
    assert redacted == expected
    assert counts == Counter({entity: 1})


@pytest.mark.parametrize("text", NEGATIVES)
def test_ids_times_prices_and_versions_are_left_alone(text: str) -> None:
    assert REDACTOR.redact_text(text) == (text, Counter())


def test_several_findings_are_counted_per_entity() -> None:
    text = "a@example.com, b@example.com, 555-123-4567 and 4111 1111 1111 1111"
    redacted, counts = REDACTOR.redact_text(text)
    assert redacted == "<EMAIL>, <EMAIL>, <PHONE> and <CARD>"
    assert counts == Counter(email=2, phone=1, card=1)
    assert count_attributes(counts) == {
        "agentstream.redacted.card": 1,
        "agentstream.redacted.email": 2,
        "agentstream.redacted.phone": 1,
    }


def test_json_content_is_redacted_string_by_string() -> None:
    """An address after an escaped newline is found, and the JSON stays valid."""
    messages = [
        {"role": "user", "parts": [{"type": "text", "content": "hi\nbob@example.com\tcall 555-123-4567"}]}
    ]
    value = json.dumps(messages)
    redacted, counts = REDACTOR.redact_value(value)
    assert json.loads(redacted)[0]["parts"][0]["content"] == "hi\n<EMAIL>\tcall <PHONE>"
    assert counts == Counter(email=1, phone=1)
    clean = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "nothing here"}]}], indent=2)
    assert REDACTOR.redact_value(clean) == (clean, Counter())  # untouched, formatting included
    assert REDACTOR.redact_value("[not json bob@example.com")[0] == "[not json <EMAIL>"


def test_only_content_attributes_are_redacted() -> None:
    attributes = {
        "gen_ai.input.messages": "write to bob@example.com",
        "gen_ai.tool.call.result": "card 4111 1111 1111 1111",
        "user.email": "bob@example.com",  # not message content: the agent chose to record it
        "gen_ai.usage.input_tokens": 12,
    }
    redacted, counts = REDACTOR.redact_attributes(attributes)
    assert redacted == {
        "gen_ai.input.messages": "write to <EMAIL>",
        "gen_ai.tool.call.result": "card <CARD>",
        "user.email": "bob@example.com",
        "gen_ai.usage.input_tokens": 12,
    }
    assert counts == Counter(email=1, card=1)
    assert attributes["gen_ai.input.messages"] == "write to bob@example.com"  # the input is not changed


def test_luhn() -> None:
    assert luhn("4111111111111111") and luhn("79927398713")
    assert not luhn("4111111111111112")


@pytest.mark.timeout(60)  # quadratic matching would take hours
def test_a_megabyte_without_findings_is_scanned_in_linear_time() -> None:
    """Bounded quantifiers: long runs of letters and digits around an "@" are no backtracking trap."""
    text = "x" * 500_000 + "@" + "1" * 500_000
    assert REDACTOR.redact_text(text) == (text, Counter())


def test_settings_pick_entities_and_plug_recognizers() -> None:
    only_email = build_redactor(["email"])
    assert only_email is not None and only_email.entities == ["email"]
    assert only_email.redact_text("555-123-4567 bob@example.com")[0] == "555-123-4567 <EMAIL>"
    assert build_redactor([]) is None
    with pytest.raises(ValueError, match="no built-in recogniser for \\['ssn'\\]"):
        build_redactor(["ssn"])
    with_custom = build_redactor(["email"], [f"{__name__}:EmployeeIds"])
    assert with_custom is not None
    assert with_custom.redact_text("ask E-12345 at bob@example.com") == (
        "ask <EMPLOYEE_ID> at <EMAIL>",
        Counter(employee_id=1, email=1),
    )
    with pytest.raises(ValueError, match="cannot import"):
        load_recognizers([f"{__name__}:Nope"])
    with pytest.raises(ValueError, match="gives no recognisers"):
        load_recognizers([f"{__name__}:NOT_A_RECOGNIZER"])


class EmployeeIds:
    """A custom recogniser, as a user would plug one in (a class: instantiated when loaded)."""

    entity = "employee_id"

    def analyze(self, text: str) -> list[Finding]:
        start = text.find("E-12345")
        return [] if start < 0 else [Finding(self.entity, start, start + 7, 1.0)]


NOT_A_RECOGNIZER = 42
