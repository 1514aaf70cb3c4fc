"""PII redaction: find e-mail addresses, phone numbers and card numbers in message content and
replace them with ``<EMAIL>``, ``<PHONE>``, ``<CARD>`` before a record leaves the agent.

The design follows Microsoft Presidio's analyzer: a :class:`Recognizer` finds one kind of entity
and scores each finding; :class:`PatternRecognizer` does it with regular expressions, an optional
validator (the Luhn checksum for cards) and context words that raise the score of a weak pattern
("call", "phone" before a bare number). A :class:`Redactor` runs its recognisers over a text,
keeps the findings scoring at least its threshold (the best of overlapping ones), replaces them,
and counts them per entity.

Everything here is a pure function of the text: no SDK state, no I/O, safe on any thread, and
usable by any producer of spans (the SDK, an OTLP ingest).

Presidio itself is not a dependency (its NLP recognisers need model downloads); its analyzer can
be plugged in as a recogniser::

    from presidio_analyzer import AnalyzerEngine
    from agentstream.producers.redaction import Finding

    class PresidioRecognizer:
        def __init__(self, entity: str, presidio_entity: str) -> None:
            self.entity, self._presidio_entity = entity, presidio_entity
            self._engine = AnalyzerEngine()

        def analyze(self, text: str) -> list[Finding]:
            results = self._engine.analyze(text=text, entities=[self._presidio_entity], language="en")
            return [Finding(self.entity, r.start, r.end, r.score) for r in results]

    agentstream.init(redactor=Redactor([*builtin_recognizers(), PresidioRecognizer("person", "PERSON")]))

or named in settings: ``AGENTSTREAM_SDK__REDACT_RECOGNIZERS='["mypkg.pii:PresidioPerson"]'``.
"""

from __future__ import annotations

import importlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson

from agentstream.schemas import genai

#: span attributes holding message content: prompts, completions, tool calls, free-text messages
CONTENT_ATTRIBUTES = frozenset(
    {
        genai.INPUT_MESSAGES,
        genai.OUTPUT_MESSAGES,
        genai.SYSTEM_INSTRUCTIONS,
        genai.TOOL_CALL_ARGUMENTS,
        genai.TOOL_CALL_RESULT,
        genai.MESSAGE_BODY,
        genai.TASK_INPUT,
    }
)
#: the attribute a record's redaction count for ``entity`` goes to
REDACTED_PREFIX = "agentstream.redacted."


@dataclass(frozen=True)
class Finding:
    """One entity found in a text: ``text[start:end]``, with a confidence ``score`` in [0, 1]."""

    entity: str
    start: int
    end: int
    score: float


@runtime_checkable
class Recognizer(Protocol):
    """Finds one kind of entity in a text (Presidio's ``EntityRecognizer``, reduced to its core)."""

    entity: str

    def analyze(self, text: str) -> Iterable[Finding]:
        """Every occurrence of :attr:`entity` in ``text``, scored."""
        ...


@dataclass(frozen=True)
class Pattern:
    """A regular expression for an entity, and the score of a match (before context)."""

    name: str
    regex: str
    score: float


class PatternRecognizer:
    """A recogniser from regular expressions, Presidio style.

    Args:
        entity: what it finds (``"email"``); the placeholder is ``<EMAIL>``.
        patterns: the expressions; keep quantifiers bounded, content can be a megabyte.
        validator: called with each match; False drops it (the Luhn checksum for cards).
        context: words that, found shortly before or after a match (whole words, any case), raise
            its score by ``context_boost``: a weak pattern then needs its context to count.
        quick: a regular expression any text with a match contains (``"@"`` for e-mail): texts
            without it are skipped cheaply.
        within: ``(regex, min_digits)``: every match lies inside a match of ``regex`` holding at least
            ``min_digits`` digits (a run of digits and separators for phone and card numbers). The
            patterns then run only there instead of over the whole text: an ordinary prompt with an
            order number or a year otherwise costs every pattern a scan of the whole content.
    """

    def __init__(
        self,
        entity: str,
        patterns: Sequence[Pattern],
        *,
        validator: Callable[[str], bool] | None = None,
        context: Sequence[str] = (),
        context_boost: float = 0.35,
        quick: str | None = None,
        within: tuple[str, int] | None = None,
    ) -> None:
        self.entity = entity
        self.within = (re.compile(within[0]), within[1]) if within else None
        self.patterns = [(p, re.compile(p.regex)) for p in patterns]
        self.validator = validator
        self.context = (
            re.compile(r"\b(?:" + "|".join(re.escape(w) for w in context) + r")\b", re.IGNORECASE)
            if context
            else None
        )
        self.context_boost = context_boost
        self.quick = re.compile(quick) if quick else None

    def analyze(self, text: str) -> list[Finding]:
        findings: list[Finding] = []
        if self.quick is not None and not self.quick.search(text):
            return findings
        windows = self._windows(text)
        for pattern, regex in self.patterns:
            matches = (
                regex.finditer(text)
                if windows is None
                else (m for pos, end in windows for m in regex.finditer(text, pos, end))
            )
            for match in matches:
                if self.validator is not None and not self.validator(match.group()):
                    continue
                score = pattern.score
                if self.context and self._in_context(text, match.start(), match.end()):
                    score = min(1.0, score + self.context_boost)
                findings.append(Finding(self.entity, match.start(), match.end(), score))
        return findings

    def _windows(self, text: str) -> list[tuple[int, int]] | None:
        """Where the patterns may match (None: everywhere). ``pos`` keeps what precedes a window
        visible to look-behinds; look-aheads need at most two characters after a match, which ends
        inside its run."""
        if self.within is None:
            return None
        region, min_digits = self.within
        return [
            (run.start(), min(len(text), run.end() + 3))
            for run in region.finditer(text)
            if sum(c.isdigit() for c in run.group()) >= min_digits
        ]

    def _in_context(self, text: str, start: int, end: int) -> bool:
        assert self.context is not None
        return bool(self.context.search(text[max(0, start - 48) : start] + " " + text[end : end + 24]))


# ---- the built-in recognisers --------------------------------------------------------------------
_FILE_SUFFIXES = frozenset("png jpg jpeg gif svg webp ico bmp tif tiff css js json txt pdf".split())


def _email_ok(match: str) -> bool:
    # "icon@2x.png" is a file name, not an address
    return match.rsplit(".", 1)[-1].lower() not in _FILE_SUFFIXES


EMAIL = PatternRecognizer(
    "email",
    [
        Pattern(
            "address",
            # bounded quantifiers: a long run of letters with no "@" costs linear time, not quadratic;
            # "git@github.com:org/repo" (an ssh remote) is not an address
            r"(?<![\w.%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@(?:[A-Za-z0-9\-]{1,63}\.){1,8}"
            r"[A-Za-z]{2,24}(?![A-Za-z0-9\-]|\.[A-Za-z0-9]|:[\w/])",
            0.9,
        )
    ],
    validator=_email_ok,
    quick="@",
)

_NOT_BEFORE = r"(?<![\w.+\-/:])"  # not the tail of an id, a version, a path or a time
_NOT_AFTER = r"(?![\w\-/:]|[.,]\d)"
_DATE = re.compile(r"\d{1,4}[./\-]\d{1,2}[./\-]\d{1,4}")
_PHONE_CONTEXT = (
    *("phone", "phones", "telephone", "tel", "mobile", "cell", "cellphone", "call", "calling"),
    *("whatsapp", "fax", "sms", "text me", "reach me", "ring me", "landline"),
)


def _phone_ok(match: str) -> bool:
    digits = sum(c.isdigit() for c in match)
    return 7 <= digits <= 15 and not _DATE.fullmatch(match)


#: a run of digits and the separators phone and card numbers use (every match of theirs lies in one)
_DIGIT_RUN = r"[+(]?\d[\d ().\-/]*\d"

PHONE = PatternRecognizer(
    "phone",
    [
        # +44 20 7946 0958, +1 (555) 123-4567, +4915112345678
        Pattern(
            "international",
            r"(?<![\w+])\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,5}" + _NOT_AFTER,
            0.7,
        ),
        # (555) 123-4567, 555-123-4567
        Pattern("north american", _NOT_BEFORE + r"(?:\(\d{3}\) ?|\d{3}-)\d{3}-\d{4}" + _NOT_AFTER, 0.65),
        # 555.123.4567, 555 123 4567: also the shape of other numbers, so only with context
        Pattern("north american, dots or spaces", _NOT_BEFORE + r"\d{3}([ .])\d{3}\1\d{4}" + _NOT_AFTER, 0.4),
        # 030 1234 5678, 06 12 34 56 78, (0)20-7946-0958: a national number, only with context
        Pattern("national", _NOT_BEFORE + r"\(?0\d{1,4}\)?(?:[ .\-/]\d{2,4}){2,5}" + _NOT_AFTER, 0.4),
    ],
    validator=_phone_ok,
    context=_PHONE_CONTEXT,
    quick=r"\d\D?\d\D?\d",
    within=(_DIGIT_RUN, 3),  # the shortest pattern (international) has three digits
)

#: issuer prefixes of the card networks (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay)
_CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3[47]|6(?:011|5|4[4-9]|2)|35|3(?:0[0-5]|[68])")


def luhn(digits: str) -> bool:
    """The Luhn checksum of a string of digits holds."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        n = int(c)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _card_ok(match: str) -> bool:
    digits = "".join(c for c in match if c.isdigit())
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn(digits)


CARD = PatternRecognizer(
    "card",
    [Pattern("card number", r"(?<![\w\-.+])\d(?:[ \-]?\d){12,18}(?![\w]|[\-.,]\d)", 0.9)],
    validator=_card_ok,
    quick=r"\d{4}",
    within=(_DIGIT_RUN, 13),
)

#: the recognisers ``sdk.redact`` can name
BUILTIN: dict[str, Recognizer] = {"email": EMAIL, "phone": PHONE, "card": CARD}


def builtin_recognizers(entities: Iterable[str] = BUILTIN) -> list[Recognizer]:
    """The built-in recognisers for ``entities`` (default: all).

    Raises:
        ValueError: an entity has no built-in recogniser.
    """
    unknown = [e for e in entities if e not in BUILTIN]
    if unknown:
        raise ValueError(f"sdk.redact: no built-in recogniser for {unknown}; use some of {sorted(BUILTIN)}")
    return [BUILTIN[e] for e in entities]


# ---- the redactor ----------------------------------------------------------------------------------
def placeholder(entity: str) -> str:
    """What a finding of ``entity`` is replaced with: ``<EMAIL>``."""
    return f"<{entity.upper()}>"


class Redactor:
    """Replaces what its recognisers find with a placeholder, counting per entity.

    Args:
        recognizers: what to look for.
        threshold: findings scoring lower are kept (a weak pattern without its context words).
    """

    def __init__(self, recognizers: Sequence[Recognizer], *, threshold: float = 0.5) -> None:
        self.recognizers = list(recognizers)
        self.threshold = threshold

    @property
    def entities(self) -> list[str]:
        return sorted({r.entity for r in self.recognizers})

    def redact_text(self, text: str) -> tuple[str, Counter[str]]:
        """``text`` with every finding replaced, and the count per entity."""
        findings = [
            f
            for r in self.recognizers
            for f in r.analyze(text)
            if f.score >= self.threshold and f.end > f.start
        ]
        counts: Counter[str] = Counter()
        if not findings:
            return text, counts
        # The best of overlapping findings wins (a Luhn-valid card over a phone-shaped part of it).
        findings.sort(key=lambda f: (-f.score, f.start - f.end, f.start))
        taken: list[Finding] = []
        for f in findings:
            if all(f.end <= t.start or f.start >= t.end for t in taken):
                taken.append(f)
        parts, pos = [], 0
        for f in sorted(taken, key=lambda f: f.start):
            parts += [text[pos : f.start], placeholder(f.entity)]
            pos = f.end
            counts[f.entity] += 1
        parts.append(text[pos:])
        return "".join(parts), counts

    def redact_value(self, value: str) -> tuple[str, Counter[str]]:
        """Like :meth:`redact_text`, but a JSON document (message lists are) is redacted string by
        string, so escapes (``\\n`` before an address) neither hide a finding nor break the JSON."""
        stripped = value.lstrip()
        if stripped[:1] in ("[", "{", '"'):
            document = _loads(value)
            if document is not _NOT_JSON:
                counts: Counter[str] = Counter()
                redacted = self._redact_json(document, counts)
                return (_dumps(redacted) if counts else value), counts
        return self.redact_text(value)

    def _redact_json(self, node: Any, counts: Counter[str]) -> Any:
        if isinstance(node, str):
            text, found = self.redact_text(node)
            counts.update(found)
            return text
        if isinstance(node, list):
            return [self._redact_json(item, counts) for item in node]
        if isinstance(node, dict):
            return {key: self._redact_json(item, counts) for key, item in node.items()}
        return node

    def redact_attributes(
        self, attributes: Mapping[str, Any], keys: Iterable[str] = CONTENT_ATTRIBUTES
    ) -> tuple[dict[str, Any], Counter[str]]:
        """A copy of ``attributes`` with the string values of ``keys`` redacted, and the counts."""
        out = dict(attributes)
        counts: Counter[str] = Counter()
        for key in keys:
            value = out.get(key)
            if isinstance(value, str) and value:
                out[key], found = self.redact_value(value)
                counts.update(found)
        return out, counts


_NOT_JSON = object()


def _loads(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    try:  # orjson refuses ints beyond 64 bits
        return json.loads(value)
    except ValueError:
        return _NOT_JSON


def _dumps(document: Any) -> str:
    try:
        return orjson.dumps(document).decode()
    except TypeError:  # an int beyond 64 bits
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def count_attributes(counts: Mapping[str, int]) -> dict[str, int]:
    """The record attributes saying what was redacted: ``{"agentstream.redacted.email": 2}``."""
    return {f"{REDACTED_PREFIX}{entity}": n for entity, n in sorted(counts.items()) if n}


def load_recognizers(paths: Iterable[str]) -> list[Recognizer]:
    """Recognisers named by import paths (``package.module:name``): each names a recogniser, a list
    of them, or a callable (a class, a factory) returning either.

    Raises:
        ValueError: a path cannot be imported or does not give recognisers.
    """
    found: list[Recognizer] = []
    for path in paths:
        module_name, _, attribute = path.partition(":")
        try:
            target: Any = getattr(importlib.import_module(module_name), attribute or "recognizer")
        except (ImportError, AttributeError) as e:
            raise ValueError(f"sdk.redact_recognizers: cannot import {path!r}: {e}") from e
        if isinstance(target, type) or (callable(target) and not isinstance(target, Recognizer)):
            target = target()
        if isinstance(target, Recognizer):
            items = [target]
        elif isinstance(target, Iterable) and not isinstance(target, (str, bytes)):
            items = list(target)
        else:
            items = []
        if not items or not all(isinstance(item, Recognizer) for item in items):
            raise ValueError(
                f"sdk.redact_recognizers: {path!r} gives no recognisers (objects with `entity` and `analyze`)"
            )
        found += items
    return found


def build_redactor(entities: Sequence[str], recognizer_paths: Sequence[str] = ()) -> Redactor | None:
    """The redactor for ``sdk.redact`` and ``sdk.redact_recognizers``; None when both are empty.

    Raises:
        ValueError: an unknown entity, or a recogniser that cannot be loaded.
    """
    recognizers = builtin_recognizers(entities) + load_recognizers(recognizer_paths)
    return Redactor(recognizers) if recognizers else None
