"""A rollout's spans as a waterfall: the span tree in depth-first order, each row placed on a time axis.

Rows carry what a failure investigation needs at a glance: LLM calls with their input and output
messages, tool calls with arguments and result, errors with their type and stack trace, and the
rewards, placed at the time they were given (a reward that came after the last span, e.g. a
business event hours later, is pinned to the right edge with how much later it came).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TypedDict

from agentstream.schemas import genai

# attributes a row shows in their own place, not in the generic attribute list
_SHOWN = frozenset(
    {
        genai.INPUT_MESSAGES, genai.OUTPUT_MESSAGES, genai.SYSTEM_INSTRUCTIONS, genai.TOOL_CALL_ARGUMENTS,
        genai.TOOL_CALL_RESULT, genai.TOOL_NAME, genai.REQUEST_MODEL, genai.ERROR_TYPE, genai.TASK_INPUT,
    }
)  # fmt: skip
_MIN_WIDTH_PCT = 0.4  # an instant span still gets a visible bar


class Message(TypedDict):
    role: str
    parts: list[dict[str, str]]
    finish_reason: str


class Row(TypedDict, total=False):
    row: str  # "span" or "reward"
    id: str
    parent_id: str | None
    depth: int
    name: str
    kind: str
    status: str
    start: datetime
    end: datetime
    duration_ms: float
    offset_pct: float
    width_pct: float
    late_ms: float
    error: str | None
    error_type: str
    stacktrace: str
    model: str
    resource: str
    input_tokens: int
    output_tokens: int
    input_messages: list[Message] | None
    output_messages: list[Message] | None
    system_instructions: str
    raw_input_messages: str
    raw_output_messages: str
    tool_name: str
    tool_arguments: str
    tool_result: str
    task_input: str
    attributes: dict[str, str]
    value: float
    feedback: str | None
    source: str
    attempt_id: str


class Waterfall(TypedDict):
    start: datetime | None
    end: datetime | None
    duration_ms: float
    rows: list[Row]
    errors: int


def build_waterfall(spans: list[dict[str, Any]], rewards: list[dict[str, Any]]) -> Waterfall:
    """Lay out ``spans`` (rows of the spans table) and ``rewards`` (rows of the rewards table)."""
    if not spans and not rewards:
        return {"start": None, "end": None, "duration_ms": 0.0, "rows": [], "errors": 0}
    if spans:
        t0 = min(s["start_time"] for s in spans)
        t1 = max(s["end_time"] for s in spans)
    else:
        t0 = min(r["timestamp"] for r in rewards)
        t1 = max(r["timestamp"] for r in rewards)
    total_us = max(_us(t1 - t0), 1)

    def place(start: datetime, end: datetime) -> tuple[float, float]:
        offset = min(max(_us(start - t0) / total_us * 100, 0.0), 100.0 - _MIN_WIDTH_PCT)
        width = max(min(_us(end - start) / total_us * 100, 100.0 - offset), _MIN_WIDTH_PCT)
        return round(offset, 3), round(width, 3)

    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
        children.setdefault(parent, []).append(span)
    rewards_of: dict[str | None, list[dict[str, Any]]] = {}
    for reward in rewards:
        anchor = next((a for a in (reward["span_id"], reward["parent_span_id"]) if a in ids), None)
        rewards_of.setdefault(anchor, []).append(reward)

    rows: list[Row] = []

    def add_reward(reward: dict[str, Any], depth: int) -> None:
        late_ms = max(_us(reward["timestamp"] - t1), 0) / 1000
        offset, _ = place(reward["timestamp"], reward["timestamp"])
        rows.append(
            {
                "row": "reward", "id": reward["reward_id"], "parent_id": reward["span_id"] or reward["parent_span_id"],
                "depth": depth, "name": reward["name"], "kind": "reward", "status": "ok",
                "start": reward["timestamp"], "end": reward["timestamp"], "duration_ms": 0.0,
                "offset_pct": offset, "width_pct": 0.0, "late_ms": late_ms, "value": reward["value"],
                "feedback": reward["feedback"], "source": reward["source"], "attempt_id": reward["attempt_id"],
                "attributes": dict(reward["attributes"]),
            }
        )  # fmt: skip

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: (s["start_time"], s["sequence_id"])):
            rows.append(_span_row(span, depth, *place(span["start_time"], span["end_time"])))
            walk(span["span_id"], depth + 1)
            for reward in rewards_of.get(span["span_id"], []):
                add_reward(reward, depth + 1)

    walk(None, 0)
    for reward in rewards_of.get(None, []):
        add_reward(reward, 0)
    errors = sum(1 for row in rows if row["status"] == "error")
    return {"start": t0, "end": t1, "duration_ms": total_us / 1000, "rows": rows, "errors": errors}


def _span_row(span: dict[str, Any], depth: int, offset: float, width: float) -> Row:
    attributes: dict[str, str] = dict(span["attributes"])
    for group in ("int_attributes", "float_attributes", "bool_attributes", "array_attributes"):
        for key, value in (span.get(group) or {}).items():
            attributes[key] = json.dumps(value) if isinstance(value, list) else str(value)
    stacktrace = next(
        (e["attributes"].get("exception.stacktrace", "") for e in span["events"] if e["name"] == "exception"),
        "",
    )
    raw_in = attributes.get(genai.INPUT_MESSAGES, "")
    raw_out = attributes.get(genai.OUTPUT_MESSAGES, "")
    resource = f"{span['resource_name']} v{span['resource_version']}" if span["resource_name"] else ""
    return {
        "row": "span", "id": span["span_id"], "parent_id": span["parent_span_id"], "depth": depth,
        "name": span["name"], "kind": span["kind"], "status": span["status"], "start": span["start_time"],
        "end": span["end_time"], "duration_ms": span["duration_ms"], "offset_pct": offset, "width_pct": width,
        "error": span["error"], "error_type": attributes.get(genai.ERROR_TYPE, ""), "stacktrace": stacktrace,
        "model": span["request_model"], "resource": resource, "input_tokens": span["input_tokens"],
        "output_tokens": span["output_tokens"],
        "input_messages": parse_messages(raw_in), "output_messages": parse_messages(raw_out),
        "raw_input_messages": raw_in, "raw_output_messages": raw_out,
        "system_instructions": attributes.get(genai.SYSTEM_INSTRUCTIONS, ""),
        "tool_name": span["tool_name"], "tool_arguments": pretty_json(attributes.get(genai.TOOL_CALL_ARGUMENTS, "")),
        "tool_result": pretty_json(attributes.get(genai.TOOL_CALL_RESULT, "")),
        "task_input": pretty_json(attributes.get(genai.TASK_INPUT, "")),
        "attempt_id": span["attempt_id"],
        "attributes": {k: v for k, v in sorted(attributes.items()) if k not in _SHOWN},
    }  # fmt: skip


def parse_messages(raw: str) -> list[Message] | None:
    """OTel GenAI messages (``[{"role", "parts": [...]}]``) as role + displayable parts; None if not that shape.

    A text part becomes ``{"type": "text", "text": ...}``; any other part (tool calls, tool
    results, media) ``{"type": <its type>, "text": <pretty JSON>}``.
    """
    if not raw:
        return None
    try:
        messages = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    out: list[Message] = []
    for message in messages:
        parts: list[dict[str, str]] = []
        for part in message.get("parts") or []:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append({"type": "text", "text": str(part.get("content", ""))})
            else:
                kind = part.get("type", "part") if isinstance(part, dict) else "part"
                parts.append({"type": str(kind), "text": json.dumps(part, indent=2, ensure_ascii=False)})
        if "content" in message and not parts:  # a plain {"role", "content"} message
            parts.append({"type": "text", "text": str(message["content"])})
        out.append(
            {
                "role": str(message.get("role", "")),
                "parts": parts,
                "finish_reason": str(message.get("finish_reason") or ""),
            }
        )
    return out


def pretty_json(raw: str) -> str:
    """``raw`` re-indented when it is JSON, else verbatim."""
    if not raw:
        return ""
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
    except ValueError:
        return raw


def _us(delta: Any) -> int:
    return int(delta.total_seconds() * 1_000_000)
