"""Generate ``support_tickets.jsonl``: 360 customer-support tickets for a fictional smart-home company.

Nimbus sells devices (hubs, cameras, locks), a subscription cloud service and an API, so all four
queues (billing, technical, shipping, account) come up naturally. Every ticket comes from a
handwritten template plus slot fillers; nothing is downloaded and no model writes text, so the
file is reproducible byte for byte: ``python examples/data/generate_tickets.py`` rewrites it, and
``--check`` only compares. The JSONL is checked in; this script stays for provenance.

The handwritten material (templates per queue, greetings, sign-offs, slot fillers) is data, in
``ticket_templates.toml`` beside this script, which also describes the template syntax; this script
draws the tickets from it. Stdlib only, so it runs without the package installed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

SEED = 20240611
OUTPUT = Path(__file__).with_name("support_tickets.jsonl")

QUEUES = ("billing", "technical", "shipping", "account")
# 360 tickets: technical 32%, billing 28%, shipping 22%, account 18%.
QUEUE_COUNTS = {"technical": 115, "billing": 101, "shipping": 79, "account": 65}
# Per queue: train / val / test. Chosen by hand so every split carries the same mix and the
# split totals come out at exactly 200 / 60 / 100.
SPLIT_COUNTS = {
    "technical": {"train": 64, "val": 19, "test": 32},
    "billing": {"train": 56, "val": 17, "test": 28},
    "shipping": {"train": 44, "val": 13, "test": 22},
    "account": {"train": 36, "val": 11, "test": 18},
}
SPLITS = ("train", "val", "test")
AMBIGUOUS_SHARE = 0.125
MAX_CHARS = 299
TEMPLATES_FILE = Path(__file__).with_name("ticket_templates.toml")


@dataclass(frozen=True)
class Template:
    text: str
    urgency: int = 1  # 0 low, 1 normal, 2 high: how pressing the situation reads before tier and wording
    business: bool = False  # written from a company's point of view, so drawn mostly from pro/enterprise
    ambiguous: bool = False  # mentions another queue's vocabulary; the label stays defensible


Material = tuple[dict[str, list[Template]], tuple[str, ...], tuple[str, ...], dict[str, tuple[str, ...]]]


def _load_material(path: Path) -> Material:
    """The templates per queue, the greetings, the sign-offs and the fillers per slot, in file order."""
    with path.open("rb") as file:
        material = tomllib.load(file)
    templates = {
        queue: [Template(**entry) for entry in entries] for queue, entries in material["templates"].items()
    }
    vocabulary = material["vocabulary"]
    fillers = {slot: tuple(values) for slot, values in vocabulary["fillers"].items()}
    return templates, tuple(vocabulary["greetings"]), tuple(vocabulary["signoffs"]), fillers


TEMPLATES, GREETINGS, SIGNOFFS, FILLERS = _load_material(TEMPLATES_FILE)

_MONTH_ABBR = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SLOT = re.compile(r"\{([a-z]+)(2?)\}")
_CHOICE = re.compile(r"\[([^\[\]]*)\]")
_PROPER = {"Nimbus", "Okta", "Alexa", "Google", "Apple", "Zapier", "Royal", "Canada"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Wording that makes an agent triage a ticket up, whatever the template's base urgency.
_URGENT = re.compile(
    r"\b(urgent|asap|immediately|right away|today|hacked|locked out|down)\b|(?-i:\bNOW\b)|now!|!{2,}|\?!",
    re.I,
)


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _dynamic(slot: str, rng: random.Random) -> str | None:
    """Fillers drawn from a range rather than a list, so order numbers and dates rarely repeat."""
    if slot == "order":
        return f"#{rng.randint(10_000, 99_999)}"
    if slot == "invoice":
        return f"INV-{rng.choice((2023, 2024))}-{rng.randint(100, 9999):04d}"
    if slot == "cardend":
        return f"{rng.randint(0, 9999):04d}"
    if slot == "nn":
        return f"{rng.randint(10, 30)}"
    if slot == "hike":
        # A price rise has to go up, and by a plausible step.
        low = rng.randrange(len(FILLERS["amount"]) - 2)
        return f"from {FILLERS['amount'][low]} to {FILLERS['amount'][low + rng.randint(1, 2)]}"
    if slot == "taxline":
        # Tax that is plainly too high for the base price, which is what the customer is querying.
        base = float(rng.choice(FILLERS["amount"])[1:])
        return f"${base * rng.choice((0.25, 0.3, 0.35)):.2f} of tax on a ${base:.2f}"
    if slot == "date":
        month, day = rng.randint(1, 12), rng.randint(1, 28)
        style = rng.randrange(4)
        if style == 0:
            return f"{_MONTH_ABBR[month - 1]} {day}"
        if style == 1:
            return f"{FILLERS['month'][month - 1]} {_ordinal(day)}"
        if style == 2:
            return f"{month}/{day}"
        return f"the {_ordinal(day)}"
    return None


def _fill(template: str, rng: random.Random) -> str:
    text = _CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), template)
    chosen: dict[str, str] = {}

    def pick(match: re.Match[str]) -> str:
        slot, second = match.group(1), match.group(2)
        key = slot + second
        if key not in chosen:
            while True:
                value = _dynamic(slot, rng) or rng.choice(FILLERS[slot])
                # "{x2}" must differ from "{x}" (a wrong item, a second city), so redraw on a clash.
                if not second or value != chosen.get(slot):
                    break
            chosen[key] = value
        return chosen[key]

    # Fill "{x}" before "{x2}" wherever they appear, so the clash check sees the first value.
    for match in sorted(_SLOT.finditer(text), key=lambda m: m.group(2)):
        pick(match)
    return _SLOT.sub(pick, text)


def _sentences(text: str) -> int:
    return len([part for part in _SENTENCE_END.split(text.strip()) if part])


def _decorate(body: str, template: Template, rng: random.Random) -> str:
    """Greetings and sign-offs on some tickets, as real inboxes have; terse ones stay bare."""
    if body[0].islower() or body.startswith(GREETINGS):
        return body
    text = body
    if rng.random() < 0.3:
        first, _, rest = body.partition(" ")
        # "Hi, the app ..." reads like a person; "Hi, The app ..." reads like a template. Names stay.
        if re.fullmatch(r"[A-Z][a-z]+('[a-z]+)?", first) and first not in _PROPER:
            first = first.lower()
        text = f"{rng.choice(GREETINGS)} {first} {rest}"
    # A signature would clash with a person already named in the ticket ("make Dan an admin - Dan").
    if rng.random() < 0.25 and "{name" not in template.text:
        text = f"{text} {_fill(rng.choice(SIGNOFFS), rng)}"
    return text if len(text) <= MAX_CHARS else body


def _tier(template: Template, rng: random.Random) -> str:
    if template.business:
        return rng.choices(("free", "pro", "enterprise"), (0.1, 0.45, 0.45))[0]
    return rng.choices(("free", "pro", "enterprise"), (0.5, 0.35, 0.15))[0]


def _priority(template: Template, tier: str, text: str, rng: random.Random) -> str:
    # Loosely tied on purpose: urgency of the situation, plus tier (SLA), plus pushy wording, plus noise.
    score = template.urgency + {"free": -0.35, "pro": 0.0, "enterprise": 0.45}[tier]
    score += 0.5 if _URGENT.search(text) else 0.0
    score += rng.uniform(-0.45, 0.45)
    return "low" if score < 0.3 else "normal" if score < 1.55 else "high"


def _allocate(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Largest-remainder split of ``total`` over ``weights`` (deterministic tie-break by split order)."""
    whole = sum(weights.values())
    exact = {key: total * w / whole for key, w in weights.items()}
    counts = {key: int(value) for key, value in exact.items()}
    order = sorted(weights, key=lambda key: (-(exact[key] - counts[key]), SPLITS.index(key)))
    for key in order[: total - sum(counts.values())]:
        counts[key] += 1
    return counts


def _draw(
    queue: str, templates: list[Template], count: int, rng: random.Random, seen: set[str]
) -> list[dict]:
    """``count`` tickets cycling through ``templates`` in shuffled rounds, so every template is used evenly."""
    drawn: list[dict] = []
    pool: list[Template] = []
    misses = 0
    while len(drawn) < count:
        if not pool:
            pool = templates[:]
            rng.shuffle(pool)
        template = pool.pop()
        body = _fill(template.text, rng)
        key = re.sub(r"\W+", " ", body.lower()).strip()
        if key in seen:
            misses += 1
            if misses > 1000:
                raise RuntimeError(f"{queue}: templates too narrow to give {count} distinct tickets")
            continue
        seen.add(key)
        if re.search(r"[{}\[\]]", body):
            raise ValueError(f"unfilled slot or choice in {template.text!r}")
        if _sentences(body) > 3 or len(body) > MAX_CHARS:
            raise ValueError(f"template too long (>3 sentences or >{MAX_CHARS} chars): {template.text!r}")
        tier = _tier(template, rng)
        text = _decorate(body, template, rng)
        drawn.append(
            {
                "text": text,
                "queue": queue,
                "priority": _priority(template, tier, text, rng),
                "customer_tier": tier,
                "ambiguous": template.ambiguous,
            }
        )
    return drawn


def build_tickets(seed: int = SEED) -> list[dict]:
    """All 360 tickets, ids assigned after a global shuffle so the id says nothing about queue or split."""
    rng = random.Random(seed)
    seen: set[str] = set()
    tickets: list[dict] = []
    for queue in QUEUES:
        total = QUEUE_COUNTS[queue]
        n_ambiguous = round(total * AMBIGUOUS_SHARE)
        ambiguous = [tpl for tpl in TEMPLATES[queue] if tpl.ambiguous]
        plain = [tpl for tpl in TEMPLATES[queue] if not tpl.ambiguous]
        hard = _draw(queue, ambiguous, n_ambiguous, rng, seen)
        easy = _draw(queue, plain, total - n_ambiguous, rng, seen)
        # Stratify twice: by queue (the fixed counts) and, inside it, ambiguous vs plain.
        targets = SPLIT_COUNTS[queue]
        hard_counts = _allocate(len(hard), targets)
        easy_counts = {split: targets[split] - hard_counts[split] for split in SPLITS}
        for group, counts in ((hard, hard_counts), (easy, easy_counts)):
            labels = [split for split in SPLITS for _ in range(counts[split])]
            rng.shuffle(labels)
            for ticket, split in zip(group, labels, strict=True):
                ticket["split"] = split
        tickets += hard + easy
    rng.shuffle(tickets)
    return [
        {
            "ticket_id": f"T-{i:04d}",
            "text": ticket["text"],
            "queue": ticket["queue"],
            "priority": ticket["priority"],
            "customer_tier": ticket["customer_tier"],
            "split": ticket["split"],
            "_ambiguous": ticket["ambiguous"],
        }
        for i, ticket in enumerate(tickets, start=1)
    ]


def render_jsonl(tickets: list[dict]) -> str:
    """The file contents; the private ``_ambiguous`` marker stays out of the published data."""
    lines = [json.dumps({k: v for k, v in ticket.items() if not k.startswith("_")}) for ticket in tickets]
    return "\n".join(lines) + "\n"


def _summary(tickets: list[dict]) -> str:
    rows = []
    for split in (None, *SPLITS):
        subset = [tk for tk in tickets if split is None or tk["split"] == split]
        mix = " ".join(f"{q}={sum(tk['queue'] == q for tk in subset) / len(subset):.1%}" for q in QUEUES)
        hard = sum(tk["_ambiguous"] for tk in subset)
        rows.append(f"{split or 'all':>5} n={len(subset):3d} {mix} ambiguous={hard}")
    priorities = {p: sum(tk["priority"] == p for tk in tickets) for p in ("low", "normal", "high")}
    tiers = {p: sum(tk["customer_tier"] == p for tk in tickets) for p in ("free", "pro", "enterprise")}
    rows.append(f"priority {priorities}  tier {tiers}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the checked-in file, write nothing"
    )
    args = parser.parse_args(argv)
    tickets = build_tickets()
    content = render_jsonl(tickets)
    if args.check:
        same = OUTPUT.exists() and OUTPUT.read_text(encoding="utf-8") == content
        print("up to date" if same else f"{OUTPUT} differs from the generator output")
        return 0 if same else 1
    OUTPUT.write_text(content, encoding="utf-8")
    print(f"wrote {len(tickets)} tickets to {OUTPUT}\n{_summary(tickets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
