"""The demo ticket dataset: sizes, label mix, split hygiene, field validity, and the loader."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
from collections import Counter
from importlib import resources
from pathlib import Path
from types import ModuleType

import pytest

import agentstream.examples
from agentstream.examples.tickets import (
    PRIORITIES,
    QUEUES,
    SPLITS,
    TIERS,
    Ticket,
    label_mix,
    load_tickets,
)

TARGET_MIX = {"technical": 0.32, "billing": 0.28, "shipping": 0.22, "account": 0.18}
SPLIT_SIZES = {"train": 200, "val": 60, "test": 100}
GENERATOR = Path(agentstream.examples.__file__).parent / "data" / "generate_tickets.py"


def _normalized(text: str) -> str:
    # Catches near-copies that differ only in case or punctuation, not just byte-identical texts.
    return re.sub(r"\W+", " ", text.lower()).strip()


@functools.cache
def _generator() -> ModuleType:
    # A script, not a package module; dataclasses need it in sys.modules while it executes.
    name = "agentstream_examples_generate_tickets"
    spec = importlib.util.spec_from_file_location(name, GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tickets() -> list[Ticket]:
    return load_tickets()


def test_sizes(tickets: list[Ticket]) -> None:
    assert len(tickets) == 360
    assert Counter(t.split for t in tickets) == SPLIT_SIZES


def test_label_mix_overall_and_per_split(tickets: list[Ticket]) -> None:
    for queue, share in label_mix(tickets).items():
        assert abs(share - TARGET_MIX[queue]) <= 0.04, (queue, share)
    for split in SPLITS:
        for queue, share in label_mix(load_tickets(split)).items():
            assert abs(share - TARGET_MIX[queue]) <= 0.08, (split, queue, share)


def test_ids_are_unique_and_sequential(tickets: list[Ticket]) -> None:
    assert [t.ticket_id for t in tickets] == [f"T-{i:04d}" for i in range(1, 361)]


def test_texts_are_unique(tickets: list[Ticket]) -> None:
    assert len({t.text for t in tickets}) == len(tickets)
    assert len({_normalized(t.text) for t in tickets}) == len(tickets)


def test_no_text_shared_across_splits(tickets: list[Ticket]) -> None:
    by_split = {split: {_normalized(t.text) for t in tickets if t.split == split} for split in SPLITS}
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]


def test_every_field_is_valid(tickets: list[Ticket]) -> None:
    for t in tickets:
        assert re.fullmatch(r"T-\d{4}", t.ticket_id)
        assert t.text == t.text.strip() and 20 <= len(t.text) < 300, t
        assert not re.search(r"[{}\[\]\n]", t.text), t  # an unfilled template slot or choice
        assert t.queue in QUEUES
        assert t.priority in PRIORITIES
        assert t.customer_tier in TIERS
        assert t.split in SPLITS


def test_file_has_exactly_the_documented_keys() -> None:
    raw = resources.files("agentstream.examples").joinpath("data/support_tickets.jsonl").read_text("utf-8")
    lines = raw.splitlines()
    assert len(lines) == 360
    expected = ["ticket_id", "text", "queue", "priority", "customer_tier", "split"]
    assert all(list(json.loads(line)) == expected for line in lines)


def test_every_label_value_is_used(tickets: list[Ticket]) -> None:
    assert {t.priority for t in tickets} == set(PRIORITIES)
    assert {t.customer_tier for t in tickets} == set(TIERS)
    for split in SPLITS:
        assert {t.queue for t in load_tickets(split)} == set(QUEUES)


def test_priority_leans_on_tier(tickets: list[Ticket]) -> None:
    # Loosely tied by design: enterprise tickets should be high priority more often than free ones.
    def high_share(tier: str) -> float:
        subset = [t for t in tickets if t.customer_tier == tier]
        return sum(t.priority == "high" for t in subset) / len(subset)

    assert high_share("enterprise") > high_share("free")


def test_load_tickets_filters_by_split(tickets: list[Ticket]) -> None:
    parts = {split: load_tickets(split) for split in SPLITS}
    for split, part in parts.items():
        assert len(part) == SPLIT_SIZES[split]
        assert all(t.split == split for t in part)
    assert sorted(t.ticket_id for part in parts.values() for t in part) == [t.ticket_id for t in tickets]
    assert load_tickets(None) == tickets


def test_unknown_split_raises() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        load_tickets("validation")


def test_label_mix_shape() -> None:
    mix = label_mix(load_tickets("val"))
    assert tuple(mix) == QUEUES
    assert sum(mix.values()) == pytest.approx(1.0)
    assert label_mix([]) == dict.fromkeys(QUEUES, 0.0)


def test_ticket_is_frozen(tickets: list[Ticket]) -> None:
    with pytest.raises(AttributeError):
        tickets[0].queue = "billing"  # type: ignore[misc]


def test_checked_in_file_matches_the_generator() -> None:
    # The JSONL is data in the repo, but it must stay reproducible from the handwritten templates.
    generator = _generator()
    built = generator.build_tickets()
    assert generator.render_jsonl(built) == generator.OUTPUT.read_text(encoding="utf-8")
    share = sum(t["_ambiguous"] for t in built) / len(built)
    assert 0.10 <= share <= 0.15
    for split in SPLITS:
        assert any(t["_ambiguous"] for t in built if t["split"] == split)


def test_generator_has_enough_handwritten_templates() -> None:
    generator = _generator()
    assert tuple(generator.QUEUES) == QUEUES
    for queue in QUEUES:
        plain = [tpl for tpl in generator.TEMPLATES[queue] if not tpl.ambiguous]
        assert len(plain) >= 25, queue


def test_your_own_tickets_file_is_read_with_defaults_and_its_queues(tmp_path: Path) -> None:
    from agentstream.examples.tickets import queues_of, read_ticket_file

    path = tmp_path / "mine.jsonl"
    rows = [
        {"text": "VPN drops every hour", "queue": "it", "split": "train"},
        {"text": "new laptop please", "queue": "procurement", "split": "train", "priority": "low"},
        {"text": "VPN again", "queue": "it", "split": "val", "ticket_id": "t-9"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    tickets = read_ticket_file(path)
    assert [t.ticket_id for t in tickets] == ["mine-1", "mine-2", "t-9"]
    assert tickets[0].priority == "normal" and tickets[1].priority == "low"
    assert queues_of(tickets) == ("it", "procurement")
    external = tmp_path / "external.jsonl"
    external.write_text(json.dumps({"text": "printer jam", "queue": "it"}) + "\n")
    assert read_ticket_file(external, require_splits=False)[0].split == "test"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "x", "queue": "a", "split": "train"}', "not json"], r"mine.jsonl:2: not JSON"),
        (['{"text": "", "queue": "a", "split": "train"}'], r":1: needs non-empty string fields"),
        (['{"text": "x", "queue": "a", "split": "dev"}'], r":1: split 'dev' is not one of"),
        (['{"text": "x", "queue": "a", "split": "train", "priority": "urgent"}'], r"priority 'urgent'"),
        (['{"text": "x", "queue": "a", "split": "train"}'], r"no 'val' tickets"),
        (["[1, 2]"], r":1: expected a JSON object"),
    ],
)
def test_a_bad_tickets_file_is_refused_naming_the_line(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    from agentstream.examples.tickets import TicketFileError, read_ticket_file

    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TicketFileError, match=message):
        read_ticket_file(path)
