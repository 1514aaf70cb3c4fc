"""Why no triplet? What ClickHouse holds of one rollout, and why it gave fewer triplets than LLM calls.

``agentstream doctor ROLLOUT_ID`` and the "Why no triplet?" panel of the dashboard's rollout page
print the same :class:`Diagnosis`: what was received (spans by kind and by attribute dialect, LLM
calls, rewards by name, the triplets' latest versions) and one verdict per call. A call without a
triplet gets exactly one reason, the first that applies of:

``judge``
    it grades: the span says so (``agentstream.judge``) or runs inside a reward span or an
    ``evaluate`` operation (any depth). Judge calls give no triplet unless
    ``streams.train_on_judge_calls``;
``duplicate``
    another captured copy of the same call (same ``gen_ai.response.id``) comes first in turn order
    ``(end, sequence, span id)``: only that copy gives a triplet;
``unknown_dialect`` / ``no_messages``
    the span came from attributes no dialect table knows, or looked like an LLM call but gave no
    usable one (``agentstream.no_call_reason`` says why);
``retracted``
    its triplet was emitted and later withdrawn (a newer version says ``retracted``);
``reward_before_calls`` / ``no_reward``
    with ``streams.emit_uncredited_calls`` off only credited calls give triplets: every reward of its
    attempt came before any of the attempt's calls had ended (``first_occurrence`` gives such a
    reward to no call), or its attempt got no reward at all;
``not_joined``
    nothing above explains it: the worker has not joined the call yet (it is behind) or the sink
    has not written the triplet yet.

The rules mirror the joiner's (``streams/join.py``, which analytics may not import: keep them alike).
A call *with* a triplet but no reward gets ``reward_before_calls``, ``no_reward`` or ``uncredited``
(the credit strategy gave its attempt's rewards to other calls) as a note.

Every query binds the rollout id as a parameter; the ``triplets`` columns added by later migrations
(``retracted``, ``reward_dimensions``) are read only where the table has them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from agentstream.schemas import genai

__all__ = ["REASONS", "CallVerdict", "Diagnosis", "diagnose"]

#: reason code -> what it means, in the order they are tested
REASONS: dict[str, str] = {
    "judge": "judge call (it grades: inside a reward or evaluation): no training data",
    "duplicate": "the same call captured twice (same response id): another copy gives the triplet",
    "unknown_dialect": "span attributes of an unrecognised dialect: no LLM call found in them",
    "no_messages": "looked like an LLM call but gave none (no messages)",
    "retracted": "its triplet was emitted, then retracted",
    "reward_before_calls": "every reward of its attempt came before any call of the attempt had ended",
    "no_reward": "no reward arrived for its attempt",
    "uncredited": "its attempt's rewards were credited to other calls",
    "not_joined": "not joined yet: the worker is behind, or the sink has not written the triplet",
}
#: the most spans of one rollout examined (a runaway agent's loop must not exhaust the page)
MAX_SPANS = 50_000
_SDK = "sdk"  # the dialect label of spans the SDK recorded itself (they carry no agentstream.dialect)


@dataclass(slots=True)
class CallVerdict:
    """One LLM call (or a span that looked like one) and what became of it."""

    span_id: str
    name: str
    attempt_id: str
    end_time: datetime
    dialect: str
    response_id: str
    #: the call's triplet, if one was emitted; ``training`` when its latest version is not retracted
    triplet_id: str | None = None
    triplet_version: int | None = None
    training: bool = False
    reward: float | None = None
    #: a code of :data:`REASONS`; ``None`` for a call whose triplet carries a reward
    reason: str | None = None
    detail: str = ""


@dataclass(slots=True)
class Diagnosis:
    """What one rollout received and why it gave the triplets it gave."""

    rollout_id: str
    spans: int = 0
    spans_by_kind: dict[str, int] = field(default_factory=dict)
    spans_by_dialect: dict[str, int] = field(default_factory=dict)
    llm_calls: int = 0
    #: name -> {"count", "sum", "first", "last"} of the rollout's rewards
    rewards_by_name: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the latest version of each of the rollout's triplets
    triplets: list[dict[str, Any]] = field(default_factory=list)
    calls: list[CallVerdict] = field(default_factory=list)
    #: rollout-level findings, one sentence each
    findings: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def triplet_count(self) -> int:
        """Triplets whose latest version is training data (not retracted)."""
        return sum(1 for t in self.triplets if not t.get("retracted"))

    @property
    def reasons(self) -> dict[str, int]:
        """How many calls got each reason (calls without a triplet first, then notes), in test order."""
        counts = Counter(c.reason for c in self.calls if c.reason)
        return {code: counts[code] for code in REASONS if counts[code]}

    @property
    def missing(self) -> list[CallVerdict]:
        """The calls that gave no triplet (or a retracted one)."""
        return [c for c in self.calls if not c.training]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (times as ISO strings): what ``--json`` prints and the dashboard's API returns."""
        out = asdict(self)
        for call in out["calls"]:
            call["end_time"] = _iso(call["end_time"])
        for stats in out["rewards_by_name"].values():
            stats["first"], stats["last"] = _iso(stats["first"]), _iso(stats["last"])
        out["triplet_count"] = self.triplet_count
        out["reasons"] = self.reasons
        out["missing"] = len(self.missing)
        return out


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _rows(client: Any, sql: str, **parameters: Any) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=parameters)
    return [dict(zip(result.column_names, row)) for row in result.result_rows]


def diagnose(client: Any, rollout_id: str, *, emit_uncredited: bool = True) -> Diagnosis:
    """The :class:`Diagnosis` of ``rollout_id`` from a clickhouse-connect ``client`` (the read role
    suffices). ``emit_uncredited``: the worker's ``streams.emit_uncredited_calls`` (whether calls
    without credit give triplets)."""
    spans = _rows(
        client,
        """
        SELECT span_id, parent_span_id, attempt_id, sequence_id, name, kind, end_time, response_id,
               operation_name, attributes[{dialect:String}] AS dialect,
               attributes[{no_call:String}] AS no_call_reason,
               attributes[{judge:String}] AS judge_text, bool_attributes[{judge:String}] AS judge_flag
        FROM spans FINAL WHERE rollout_id = {rollout_id:String}
        ORDER BY end_time, sequence_id, span_id
        LIMIT {limit:UInt32}
        """,
        rollout_id=rollout_id,
        dialect=genai.DIALECT,
        no_call=genai.NO_CALL_REASON,
        judge=genai.JUDGE,
        limit=MAX_SPANS,
    )
    rewards = _rows(
        client,
        """
        SELECT reward_id, attempt_id, name, value, timestamp, span_id, response_id
        FROM rewards FINAL WHERE rollout_id = {rollout_id:String}
        ORDER BY timestamp, sequence_id, reward_id
        """,
        rollout_id=rollout_id,
    )
    report = Diagnosis(rollout_id, truncated=len(spans) >= MAX_SPANS)
    report.triplets = _latest_triplets(client, rollout_id)
    _count(report, spans, rewards)
    _judge(report, spans, rewards, emit_uncredited)
    return report


def _latest_triplets(client: Any, rollout_id: str) -> list[dict[str, Any]]:
    columns = set(client.query("SELECT * FROM triplets LIMIT 0").column_names)
    extra = [c for c in ("retracted", "reward_dimensions") if c in columns]
    rows = _rows(
        client,
        f"""
        SELECT triplet_id, version, span_id, attempt_id, step, reward{"".join(", " + c for c in extra)}
        FROM triplets WHERE rollout_id = {{rollout_id:String}}
        ORDER BY triplet_id, version DESC
        LIMIT 1 BY triplet_id
        """,
        rollout_id=rollout_id,
    )
    for row in rows:
        row["retracted"] = bool(row.get("retracted", False))
        if "reward_dimensions" in row:
            row["reward_dimensions"] = dict(row["reward_dimensions"])
    return rows


def _count(report: Diagnosis, spans: list[dict[str, Any]], rewards: list[dict[str, Any]]) -> None:
    report.spans = len(spans)
    report.spans_by_kind = dict(Counter(s["kind"] for s in spans).most_common())
    report.spans_by_dialect = dict(Counter(s["dialect"] or _SDK for s in spans).most_common())
    report.llm_calls = sum(1 for s in spans if s["kind"] == "llm")
    for reward in rewards:
        stats = report.rewards_by_name.setdefault(
            reward["name"],
            {"count": 0, "sum": 0.0, "first": reward["timestamp"], "last": reward["timestamp"]},
        )
        stats["count"] += 1
        stats["sum"] += reward["value"]
        stats["last"] = reward["timestamp"]


def _is_evaluation(span: dict[str, Any]) -> bool:
    """The span grades (the joiner's ``is_evaluation_span``): a reward span, an ``evaluate`` operation, or
    a span marked a judge (a bool attribute, or its text from an OTLP dialect)."""
    return (
        span["kind"] == "reward"
        or span["operation_name"] == genai.OPERATION_EVALUATE
        or bool(span["judge_flag"])
        or span["judge_text"] in ("true", "True", "1")
    )


def _judge(
    report: Diagnosis, spans: list[dict[str, Any]], rewards: list[dict[str, Any]], emit_uncredited: bool
) -> None:
    by_id = {s["span_id"]: s for s in spans}
    calls = [s for s in spans if s["kind"] == "llm" or s["no_call_reason"]]
    llm = [s for s in calls if s["kind"] == "llm"]
    judges = {s["span_id"] for s in llm if _under_evaluation(s, by_id)}
    kept: dict[str, dict[str, Any]] = {}  # response id -> the copy first in turn order (spans are sorted so)
    for span in llm:
        if span["response_id"]:
            kept_copy = kept.setdefault(span["response_id"], span)
            if span["span_id"] in judges:
                judges.add(kept_copy["span_id"])  # the kept copy is a judge call if any copy is
    triplets = {t["span_id"]: t for t in report.triplets}
    credit_notes = _credit_notes(llm, rewards)
    for span in calls:
        verdict = CallVerdict(
            span_id=span["span_id"],
            name=span["name"],
            attempt_id=span["attempt_id"],
            end_time=span["end_time"],
            dialect=span["dialect"] or _SDK,
            response_id=span["response_id"],
        )
        triplet = triplets.get(span["span_id"])
        if triplet is not None:
            verdict.triplet_id, verdict.triplet_version = triplet["triplet_id"], triplet["version"]
            verdict.reward = triplet["reward"]
        first = kept.get(span["response_id"]) if span["response_id"] else None
        if triplet is not None and not triplet["retracted"]:
            verdict.training = True
            if triplet["reward"] is None:  # a judge call trained on, or a call without credit
                judge = span["span_id"] in judges
                verdict.reason = "judge" if judge else credit_notes.get(span["span_id"], "uncredited")
        elif span["span_id"] in judges:
            verdict.reason = "judge"
        elif first is not None and first is not span:
            verdict.reason = "duplicate"
            verdict.detail = f"kept copy: span {first['span_id']}"
        elif span["dialect"] == "unknown":
            verdict.reason = "unknown_dialect"
            verdict.detail = span["no_call_reason"]
        elif span["no_call_reason"]:
            verdict.reason = "no_messages"
            verdict.detail = span["no_call_reason"]
        elif triplet is not None:
            verdict.reason = "retracted"
        elif not emit_uncredited and span["span_id"] in credit_notes:
            verdict.reason = credit_notes[span["span_id"]]
        else:
            verdict.reason = "not_joined"
        if not verdict.detail and verdict.reason:
            verdict.detail = REASONS[verdict.reason]
        report.calls.append(verdict)
    _findings(report, spans, rewards, llm)


def _under_evaluation(span: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> bool:
    """The span or one of its ancestors (among the rollout's spans) grades."""
    seen: set[str] = set()
    current: dict[str, Any] | None = span
    while current is not None and current["span_id"] not in seen:
        if _is_evaluation(current):
            return True
        seen.add(current["span_id"])
        parent = current["parent_span_id"]
        current = by_id.get(parent) if parent else None
    return False


def _credit_notes(llm: list[dict[str, Any]], rewards: list[dict[str, Any]]) -> dict[str, str]:
    """span id -> why the call may have got no credit: ``reward_before_calls`` or ``no_reward`` (calls
    of attempts that got a reward after a call of theirs ended are absent)."""
    if not llm:
        return {}
    latest_attempt = max(llm, key=lambda s: (s["end_time"], s["span_id"]))["attempt_id"]
    ends: dict[str, datetime] = {}
    for span in llm:
        ends[span["attempt_id"]] = min(ends.get(span["attempt_id"], span["end_time"]), span["end_time"])
    notes: dict[str, str] = {}
    for attempt, first_end in ends.items():
        applying = [
            r
            for r in rewards
            if (r["attempt_id"] or latest_attempt) == attempt and not (r["span_id"] or r["response_id"])
        ]
        if not applying:
            note = "no_reward"
        elif all(r["timestamp"] < first_end for r in applying):
            note = "reward_before_calls"
        else:
            continue
        notes.update({s["span_id"]: note for s in llm if s["attempt_id"] == attempt})
    return notes


def _findings(
    report: Diagnosis, spans: list[dict[str, Any]], rewards: list[dict[str, Any]], llm: list[dict[str, Any]]
) -> None:
    say = report.findings.append
    if not spans and not rewards and not report.triplets:
        say("Nothing received for this rollout id: no spans, rewards or triplets.")
        return
    if report.truncated:
        say(f"Only the first {MAX_SPANS} spans of this rollout were examined.")
    if not llm:
        dialects = ", ".join(f"{d}: {n}" for d, n in report.spans_by_dialect.items()) or "none"
        say(f"No LLM spans: {len(spans)} span(s), none of kind llm (dialects {dialects}).")
    unknown = report.spans_by_dialect.get("unknown", 0)
    if unknown:
        say(
            f"{unknown} span(s) in an unrecognised attribute dialect: stored, but no call was read from them."
        )
    if llm:
        first_end = min(s["end_time"] for s in llm)
        early = [r for r in rewards if r["timestamp"] < first_end and not (r["span_id"] or r["response_id"])]
        for reward in early:
            say(
                f"Reward {reward['name']!r} = {reward['value']:g} came at {_iso(reward['timestamp'])}, before any "
                "LLM call had ended: first_occurrence credits it to no call."
            )
    if not rewards:
        say(
            "No rewards: triplets carry no reward (and none are emitted without streams.emit_uncredited_calls)."
        )
    missing = len(report.missing)
    if report.calls:
        say(
            f"{report.llm_calls} LLM call(s) gave {report.triplet_count} triplet(s)"
            + (f"; {missing} span(s) gave none: see why below." if missing else ".")
        )
