"""``ResourceVersion``: an immutable version of a prompt template, LLM or checkpoint
(schema: ``resource_version.avsc``), and the prompt-template syntax runners render.

Templates mark variables as ``{{name}}`` (spaces inside the braces allowed). Single braces are
plain text, so templates may carry JSON examples such as ``{"queue": "billing"}`` unescaped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import orjson
from pydantic import Field

from .record import AvroRecord, TimestampMicros

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class TemplateError(ValueError):
    """A prompt template whose variables do not match what it declares or is given."""


def template_variables(template: str) -> list[str]:
    """The variables of a template, in order of first appearance."""
    return list(dict.fromkeys(_VARIABLE.findall(template)))


def check_template(template: str, variables: list[str] | None) -> list[str]:
    """Validate a template against the variables it is declared with; returns the variables.

    ``None`` declares whatever the template uses (it must use at least one). A declared variable
    the template never uses, or a used one that is not declared, is an error: either would make
    every rollout render a prompt that silently lacks its input.
    """
    used = template_variables(template)
    if variables is None:
        if not used:
            raise TemplateError("the template uses no {{variable}}: it cannot see the task input")
        return used
    missing = [v for v in variables if v not in used]
    undeclared = [v for v in used if v not in variables]
    if missing or undeclared:
        parts = []
        if missing:
            parts.append(f"declared but not used: {missing}")
        if undeclared:
            parts.append(f"used but not declared: {undeclared}")
        raise TemplateError("template variables do not match (" + "; ".join(parts) + ")")
    return list(variables)


def render_template(template: str, values: Mapping[str, Any]) -> str:
    """Substitute every ``{{variable}}``; a variable without a value is an error."""
    missing = [v for v in template_variables(template) if v not in values]
    if missing:
        raise TemplateError(f"no value for template variable(s) {missing}")
    return _VARIABLE.sub(lambda m: str(values[m.group(1)]), template)


class ResourceKind(StrEnum):
    PROMPT_TEMPLATE = "prompt_template"
    LLM = "llm"
    MODEL_CHECKPOINT = "model_checkpoint"
    OTHER = "other"


class ResourceVersion(AvroRecord):
    avro_stem = "resource_version"

    resource_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    version: int = Field(ge=1)
    kind: ResourceKind
    template: str | None = None
    variables: list[str] = Field(default_factory=list)
    uri: str | None = None
    config: dict[str, str] = Field(default_factory=dict)
    parent_version: int | None = None
    lineage: dict[str, str] = Field(default_factory=dict)
    content_hash: str = ""
    created_at: TimestampMicros
    created_by: str = ""

    def render(self, **values: Any) -> str:
        """This prompt template with its variables substituted."""
        if self.template is None:
            raise TemplateError(
                f"{self.resource_name} v{self.version} is a {self.kind}, not a prompt template"
            )
        return render_template(self.template, values)


def content_hash(kind: str, template: str | None, uri: str | None, config: Mapping[str, str]) -> str:
    """What makes two versions the same content (publishing it again is a no-op)."""
    body = orjson.dumps(
        {"kind": kind, "template": template, "uri": uri, "config": dict(config)}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(body).hexdigest()[:16]
