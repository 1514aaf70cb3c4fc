"""Triplets as training rows: SFT examples, KTO examples, DPO pairs and GRPO groups.

Prompts and responses are stored as OpenTelemetry GenAI messages (JSON); a row is either
*conversational* (OpenAI-style messages, rendered by the model's chat template inside trl) or *text*
(the prompt and completion strings the model saw and produced, for base models and completions
APIs). Rows are plain dicts; :func:`to_dataset` makes the ``datasets.Dataset`` trl wants.

Tasks. A triplet carries no task key: attempts are grouped as "the same task" by the text of the
prompt the model saw (:func:`task_key`, a hash of the prompt messages). Attempts of one task that
rendered the same prompt (several rollouts of the same input, or retries) share a key; the same
input rendered by two prompt-template versions does not, which is what group-relative advantages
need (the attempts answer the same prompt).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agentstream.schemas import Triplet
from agentstream.schemas.genai import otel_messages_to_openai

Format = Literal["messages", "text"]
#: what a trainer's ``format`` may be: ``auto`` picks messages when the tokenizer has a chat template
FORMATS = ("auto", "messages", "text")

__all__ = [
    "FORMATS",
    "Attempt",
    "Format",
    "dpo_pairs",
    "grpo_groups",
    "kto_rows",
    "prompt_messages",
    "prompt_text",
    "resolve_format",
    "response_text",
    "sft_rows",
    "task_key",
    "to_dataset",
]


def prompt_messages(triplet: Triplet) -> list[dict[str, Any]]:
    """The prompt as OpenAI chat messages (a plain-text prompt becomes one user message)."""
    try:
        messages = otel_messages_to_openai(json.loads(triplet.prompt_messages))
    except (ValueError, TypeError, KeyError, AttributeError):
        return [{"role": "user", "content": triplet.prompt_messages}]
    return [{"role": m.get("role", "user"), "content": _content(m)} for m in messages]


def prompt_text(triplet: Triplet) -> str:
    """The prompt as the text a completions API got (message contents, joined by newlines)."""
    return "\n".join(m["content"] for m in prompt_messages(triplet))


def response_text(triplet: Triplet) -> str:
    """The model's answer: its text, or its tool calls as JSON when it only called tools."""
    try:
        messages = otel_messages_to_openai(json.loads(triplet.response))
    except (ValueError, TypeError, KeyError, AttributeError):
        return triplet.response
    return "".join(_content(m) for m in messages if m.get("role", "assistant") == "assistant")


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str) and (content or not message.get("tool_calls")):
        return content
    calls = [c.get("function", {}) for c in message.get("tool_calls") or ()]
    if calls:
        return json.dumps([{"name": f.get("name"), "arguments": f.get("arguments")} for f in calls])
    return ""


def task_key(triplet: Triplet) -> str:
    """Which task an attempt belongs to: a hash of the prompt messages (see the module doc)."""
    normalised = json.dumps(prompt_messages(triplet), sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(normalised.encode(), digest_size=8).hexdigest()


def resolve_format(requested: str, tokenizer: Any) -> Format:
    """``auto``: conversational when the tokenizer has a chat template, else text."""
    if requested == "auto":
        return "messages" if getattr(tokenizer, "chat_template", None) else "text"
    if requested == "messages":
        return "messages"
    if requested == "text":
        return "text"
    raise ValueError(f"unknown format {requested!r}: use auto, messages or text")


def _prompt(triplet: Triplet, fmt: Format) -> Any:
    return prompt_messages(triplet) if fmt == "messages" else prompt_text(triplet)


def _completion(text: str, fmt: Format) -> Any:
    return [{"role": "assistant", "content": text}] if fmt == "messages" else text


def sft_rows(triplets: Iterable[Triplet], fmt: Format) -> list[dict[str, Any]]:
    """``{"messages": [...]}`` (assistant-only loss) or ``{"prompt", "completion"}`` (completion-only loss)."""
    rows: list[dict[str, Any]] = []
    for t in triplets:
        response = response_text(t)
        if not response:
            continue
        if fmt == "messages":
            rows.append({"messages": [*prompt_messages(t), {"role": "assistant", "content": response}]})
        else:
            rows.append({"prompt": prompt_text(t), "completion": response})
    return rows


def kto_rows(triplets: Iterable[Triplet], fmt: Format, threshold: float) -> list[dict[str, Any]]:
    """Unpaired examples for KTO: ``label`` is whether the reward reached ``threshold``."""
    return [
        {
            "prompt": _prompt(t, fmt),
            "completion": _completion(response_text(t), fmt),
            "label": bool(t.reward is not None and t.reward >= threshold),
        }
        for t in triplets
        if t.reward is not None and response_text(t)
    ]


def dpo_pairs(triplets: Iterable[Triplet], fmt: Format, min_margin: float = 0.0) -> list[dict[str, Any]]:
    """One preference pair per task: its best-rewarded response against its worst.

    Tasks with a single attempt, equal responses, or a reward gap not above ``min_margin`` give none.
    """
    rows = []
    for attempts in _by_task(triplets).values():
        rewarded = [(t.reward, t) for t in attempts if t.reward is not None and response_text(t)]
        if len(rewarded) < 2:
            continue
        best_reward, best = max(rewarded, key=lambda pair: pair[0])
        worst_reward, worst = min(rewarded, key=lambda pair: pair[0])
        if best_reward - worst_reward <= min_margin or response_text(best) == response_text(worst):
            continue
        rows.append(
            {
                "prompt": _prompt(best, fmt),
                "chosen": _completion(response_text(best), fmt),
                "rejected": _completion(response_text(worst), fmt),
            }
        )
    return rows


@dataclass(frozen=True)
class Attempt:
    """One logged attempt at a task, as GRPO replays it."""

    triplet: Triplet
    reward: float


def grpo_groups(
    triplets: Iterable[Triplet], group_size: int, min_attempts: int = 2
) -> dict[str, list[Attempt]]:
    """Attempts of the same task in groups of exactly ``group_size`` (GRPO's ``num_generations``).

    A task with more attempts is split into several groups; a group short of ``group_size`` is
    filled by repeating its attempts (the advantage of a repeated attempt is its own). Groups with
    fewer than ``min_attempts`` distinct attempts, or where every reward is the same, are dropped:
    their group-relative advantages are all zero.
    """
    groups: dict[str, list[Attempt]] = {}
    for key, attempts in _by_task(triplets).items():
        rewarded = [
            Attempt(t, float(t.reward)) for t in attempts if t.reward is not None and response_text(t)
        ]
        for index, start in enumerate(range(0, len(rewarded), group_size)):
            chunk = rewarded[start : start + group_size]
            if len(chunk) < min_attempts or len({a.reward for a in chunk}) < 2:
                continue
            groups[f"{key}/{index}"] = [chunk[i % len(chunk)] for i in range(group_size)]
    return groups


def _by_task(triplets: Iterable[Triplet]) -> dict[str, list[Triplet]]:
    tasks: dict[str, list[Triplet]] = {}
    for t in triplets:
        tasks.setdefault(task_key(t), []).append(t)
    return tasks


def to_dataset(rows: Sequence[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(list(rows))
