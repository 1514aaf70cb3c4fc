"""Prompt templates as APO edits them: *instruction* + *demonstrations* + *query*, and the optimizer's prompts.

The query starts at the first line with a ``{{variable}}`` (:func:`split_template`); a rendered
prompt is matched back to its variable values with :func:`template_regex`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from agentstream.schemas import TemplateError, render_template
from agentstream.schemas.genai import otel_messages_to_openai

__all__ = [
    "CRITIQUE_PROMPT",
    "EDIT_PROMPT",
    "assemble",
    "message_text",
    "render_demo",
    "response_class",
    "split_template",
    "template_regex",
]

_VARIABLE_LINE = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")

CRITIQUE_PROMPT = """A prompt for a language model is not working well. Read the prompt's instruction and \
the mistakes it led to, then say in two or three sentences what the instruction should change.

Instruction:
{instruction}

Mistakes:
{mistakes}

Critique:"""

EDIT_PROMPT = """Rewrite an instruction for a language model so that it fixes the critique. Keep it short, \
keep the task and output format the same, and write only the new instruction.

Instruction:
{instruction}

Critique:
{critique}

New instruction:"""


def split_template(template: str) -> tuple[str, str]:
    """(instruction, query): the query starts at the first line that uses a variable."""
    lines = template.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if _VARIABLE_LINE.search(line):
            return "".join(lines[:i]).strip(), "".join(lines[i:])
    raise TemplateError("the template has no variable line")


def template_regex(template: str, greedy: Sequence[str] = ("demonstrations",)) -> re.Pattern[str]:
    """A pattern that recovers the variable values of a rendered template.

    Variables match as little as they can, except those in ``greedy``: retrieved demonstrations
    repeat the query that follows them, so they extend to its last occurrence."""
    parts, last, seen = [], 0, set()
    for match in _VARIABLE_LINE.finditer(template):
        parts.append(re.escape(template[last : match.start()]))
        name = match.group(0).strip("{} ")
        group = ".*" if name in greedy else ".*?"
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>{group})")
        seen.add(name)
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts) + r"\Z", re.S)


def assemble(instruction: str, demos: Sequence[str], query: str) -> str:
    head = instruction.strip()
    body = "".join(demos)
    return (head + "\n\n" if head else "") + body + query


def message_text(messages_json: str) -> str | None:
    """The text of a triplet's prompt or response (OTel GenAI messages JSON, or plain text)."""
    try:
        messages = otel_messages_to_openai(json.loads(messages_json))
    except (ValueError, TypeError, KeyError):
        return messages_json or None
    texts = [content for m in messages if isinstance(content := m.get("content"), str)]
    return "".join(texts) if texts else None


def response_class(response: str) -> str:
    """Demonstrations are spread over distinct responses (e.g. different tool arguments)."""
    return " ".join(response.split())[:60]


def render_demo(query: str, values: Mapping[str, str], response: str) -> str:
    """One demonstration: the query rendered with an example's values, then its response."""
    return render_template(query, values) + response.rstrip("\n") + "\n\n"
