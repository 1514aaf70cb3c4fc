"""Rewards carried by spans: Agent Lightning annotations (and their older form), AgentOps reward
outputs, evaluator spans and ``gen_ai.evaluation.result`` span events (see :mod:`.dialect_table`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agentstream.schemas import genai

from . import dialect_table as t
from .decode import OtlpSpan
from .values import first, index_key, indexed, number, parsed, str_or_none, strings


def is_reward_span(span: OtlpSpan, attributes: Mapping[str, Any]) -> bool:
    """An Agent Lightning reward annotation (new or old form) or an AgentOps reward output."""
    if span.name in t.AGL_OLD_REWARD_SPANS:
        return True
    prefix = t.AGL_REWARD_PREFIX + "."
    return any(key.startswith(prefix) for key in attributes) or any(
        _agentops_reward(attributes.get(k)) is not None for k in t.AGENTOPS_OUTPUT_KEYS
    )


@dataclass(frozen=True, slots=True)
class _Origin:
    """The span a reward was found in, and what it may name as the scored call."""

    span: OtlpSpan
    rollout_id: str
    attempt_id: str
    target_span: str | None = None
    target_response: str | None = None

    def reward(
        self,
        suffix: str,
        name: str,
        value: float,
        *,
        source: str = "rule",
        feedback: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A Reward datum: id from the span (deterministic), timestamp = the span's end."""
        span = self.span
        return {
            "reward_id": f"{span.span_id}:{suffix}",
            "rollout_id": self.rollout_id,
            "attempt_id": self.attempt_id,
            "span_id": self.target_span,
            "response_id": self.target_response,
            "trace_id": span.trace_id,
            "parent_span_id": span.span_id,  # the span that carried the reward
            "sequence_id": 0,
            "name": name,
            "value": value,
            "feedback": feedback,
            "source": source,
            "timestamp": span.end_ns // 1000,
            "attributes": strings(attributes or {}),
        }


def span_rewards(
    span: OtlpSpan, attributes: Mapping[str, Any], kind: str, rollout_id: str, attempt_id: str
) -> list[dict[str, Any]]:
    """The Reward datums a normalised span carries (``attributes``: after renames; ``kind``: its kind)."""
    rewards: list[dict[str, Any]] = []
    target_span, target_response = _links(attributes)
    origin = _Origin(span, rollout_id, attempt_id, target_span, target_response)
    # Agent Lightning annotations: one reward per dimension
    dimensions = indexed(attributes, t.AGL_REWARD_PREFIX)
    for k in sorted(dimensions, key=index_key):
        item = dimensions[k]
        value = number(item.get("value"))
        if value is not None:
            name = str(item.get("name") or "reward")
            # AGL names a scalar reward "primary": that is our default dimension, "reward"
            name = "reward" if name == t.AGL_SCALAR_NAME else name
            extra = {t.PRIMARY_MARK: "true"} if k == "0" and len(dimensions) > 1 else None
            rewards.append(origin.reward(k, name, value, attributes=extra))
    if not rewards and span.name in t.AGL_OLD_REWARD_SPANS:
        value = number(attributes.get(t.AGL_OLD_REWARD_KEY))
        if value is not None:
            rewards.append(origin.reward("reward", "reward", value))
    for key in t.AGENTOPS_OUTPUT_KEYS:
        output = _agentops_reward(attributes.get(key))
        if output is not None and not rewards:
            rewards.append(origin.reward("agentops", *output))
    if kind == t.REWARD and not rewards:  # OpenInference EVALUATOR, gen_ai evaluate operation
        value = number(first(attributes, t.EVALUATOR_SCORES))
        if value is None and attributes.get("openinference.span.kind"):
            value = number(attributes.get("output.value"))
        if value is not None:
            response_id = target_response or str_or_none(attributes.get(genai.RESPONSE_ID))
            evaluator = replace(origin, target_response=response_id)
            name = str(first(attributes, t.EVALUATOR_NAMES) or "reward")
            feedback = str_or_none(first(attributes, t.EVALUATOR_EXPLANATIONS))
            rewards.append(evaluator.reward("evaluation", name, value, source="judge", feedback=feedback))
    for i, event in enumerate(span.events):
        if event.name != t.EVALUATION_EVENT:
            continue
        value = number(event.attributes.get(t.EVALUATION_SCORE))
        if value is None:
            continue
        # parented to the evaluated operation: an LLM call is then the explicit target
        evaluated = replace(
            origin,
            target_span=span.span_id if kind == t.LLM else None,
            target_response=str_or_none(event.attributes.get(genai.RESPONSE_ID)),
        )
        rewards.append(
            evaluated.reward(
                f"eval{i}",
                str(event.attributes.get(t.EVALUATION_NAME) or "reward"),
                value,
                source="judge",
                feedback=str_or_none(event.attributes.get(t.EVALUATION_EXPLANATION)),
                attributes={k: v for k, v in event.attributes.items() if k.startswith("gen_ai.evaluation.")},
            )
        )
    return rewards


def _links(attributes: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Agent Lightning links: a reward naming the call it scores (by span id or response id)."""
    span_id = response_id = None
    for link in indexed(attributes, t.AGL_LINK_PREFIX).values():
        key, value = link.get("key_match"), str_or_none(link.get("value_match"))
        if key == "span_id":
            span_id = value
        elif key == genai.RESPONSE_ID:
            response_id = value
    return span_id, response_id


def _agentops_reward(raw: Any) -> tuple[str, float] | None:
    data = parsed(raw)
    if isinstance(data, dict) and data.get("type") == "reward":
        value = number(data.get("value"))
        if value is not None:
            return str(data.get("name") or "reward"), value
    return None
