"""The attribute dialects the OTLP normaliser knows, as data (the code that walks it is :mod:`.dialects`).

Each :class:`Dialect` says how a span of it is recognised, how its kind is decided and where its
chat messages are. Everything that does not depend on the dialect (renames of old attribute names,
token ids, rollout ids, rewards, tool fields) is a table of its own below; the normaliser applies
those to every span. Adding a dialect or an alias is an edit here, not in the code.

Sources read for the names: OpenTelemetry GenAI semantic conventions (current and the indexed
``gen_ai.prompt.N.*`` attributes they replaced), OpenLLMetry's ``opentelemetry-instrumentation-openai``
and ``traceloop-sdk`` decorators, OpenInference's semantic conventions, AgentOps, and Agent
Lightning's ``semconv`` / reward emitter (``agentlightning.reward.<k>.name/value`` annotations,
``agentlightning.link.<k>.key_match/value_match`` links, the older ``reward`` attribute).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Span kinds (schemas.span.SpanKind values)
LLM, TOOL, REWARD, AGENT, OTHER = "llm", "tool", "reward", "agent", "other"


@dataclass(frozen=True)
class IndexedMessages:
    """Messages flattened into indexed attributes: ``{prefix}.{N}.{field}`` (and tool calls
    ``{prefix}.{N}.{tool_calls}.{M}.{field}``). Paths are relative to the message index."""

    input_prefix: str
    output_prefix: str
    role: str
    content: str
    tool_calls: str
    tool_call_name: str
    tool_call_arguments: str
    tool_call_id: str
    tool_call_response_id: str  # on a tool message: the call it answers
    name: str
    finish_reason: str = ""
    #: multimodal content parts: ``{contents}.{J}.{part_type}`` / ``.{part_text}`` / ``.{part_image}``
    contents: str = ""
    part_type: str = ""
    part_text: str = ""
    part_image: str = ""


@dataclass(frozen=True)
class Dialect:
    """One attribute dialect.

    A span is of the first dialect in :data:`DIALECTS` for which any detector matches: a resource
    attribute value (``resource_values``), an attribute key (``keys``), a key prefix (``prefixes``)
    or a span name (``span_names``).
    """

    name: str
    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    span_names: tuple[str, ...] = ()
    resource_values: tuple[tuple[str, str], ...] = ()
    #: (attribute, {lower-cased value: kind}), tried in order; the first attribute present decides
    kind_rules: tuple[tuple[str, dict[str, str]], ...] = ()
    #: the kind when no rule decides (None: LLM if it has messages or a model, else other)
    default_kind: str | None = None
    indexed: IndexedMessages | None = None
    #: messages as OTel JSON attributes (and the inference-details event): the current conventions
    otel_messages: bool = False


OTEL_OPERATIONS: Final = {
    "chat": LLM,
    "text_completion": LLM,
    "generate_content": LLM,
    "completion": LLM,
    "execute_tool": TOOL,
    "evaluate": REWARD,
    "invoke_agent": AGENT,
    "create_agent": AGENT,
    "invoke_workflow": AGENT,
    "embeddings": OTHER,
}

TRACELOOP_KINDS: Final = {"tool": TOOL, "workflow": AGENT, "agent": AGENT, "task": AGENT}
LLM_REQUEST_TYPES: Final = {"chat": LLM, "completion": LLM, "rerank": OTHER, "embedding": OTHER}
AGENTOPS_KINDS: Final = {
    "llm": LLM,
    "tool": TOOL,
    "agent": AGENT,
    "task": AGENT,
    "workflow": AGENT,
    "session": AGENT,
    "operation": OTHER,
}
OPENINFERENCE_KINDS: Final = {
    "llm": LLM,
    "tool": TOOL,
    "evaluator": REWARD,
    "agent": AGENT,
    "chain": AGENT,
    "retriever": OTHER,
    "embedding": OTHER,
    "reranker": OTHER,
    "guardrail": OTHER,
}

GEN_AI_INDEXED: Final = IndexedMessages(
    input_prefix="gen_ai.prompt",
    output_prefix="gen_ai.completion",
    role="role",
    content="content",
    tool_calls="tool_calls",
    tool_call_name="name",
    tool_call_arguments="arguments",
    tool_call_id="id",
    tool_call_response_id="tool_call_id",
    name="name",
    finish_reason="finish_reason",
)

OPENINFERENCE_MESSAGES: Final = IndexedMessages(
    input_prefix="llm.input_messages",
    output_prefix="llm.output_messages",
    role="message.role",
    content="message.content",
    tool_calls="message.tool_calls",
    tool_call_name="tool_call.function.name",
    tool_call_arguments="tool_call.function.arguments",
    tool_call_id="tool_call.id",
    tool_call_response_id="message.tool_call_id",
    name="message.name",
    contents="message.contents",
    part_type="message_content.type",
    part_text="message_content.text",
    part_image="message_content.image.image.url",
)

_OTEL_RULES: Final = (("gen_ai.operation.name", OTEL_OPERATIONS),)

#: In detection order: the most specific first (an AGL reward span may also carry AgentOps keys).
DIALECTS: Final[tuple[Dialect, ...]] = (
    Dialect(
        "agentstream",
        resource_values=(("telemetry.sdk.name", "agentstream"),),
        kind_rules=(("agentstream.span.kind", {k: k for k in (LLM, TOOL, REWARD, AGENT, OTHER)}),)
        + _OTEL_RULES,
        otel_messages=True,
    ),
    Dialect(
        "agentlightning",
        prefixes=("agentlightning.reward.",),
        keys=("agentlightning.reward",),
        span_names=(
            "agentlightning.annotation",
            "agentlightning.reward",
            "agentlightning.operation",
            "agentlightning.virtual",
            "agentlightning.message",
            "agentlightning.object",
            "agentlightning.exception",
        ),
    ),
    Dialect(
        "openinference",
        keys=("openinference.span.kind",),
        prefixes=("llm.input_messages.", "llm.output_messages."),
        kind_rules=(("openinference.span.kind", OPENINFERENCE_KINDS),),
        indexed=OPENINFERENCE_MESSAGES,
    ),
    Dialect(
        "openllmetry",
        keys=("traceloop.span.kind", "traceloop.entity.name", "traceloop.workflow.name"),
        kind_rules=(("traceloop.span.kind", TRACELOOP_KINDS), ("llm.request.type", LLM_REQUEST_TYPES))
        + _OTEL_RULES,
        indexed=GEN_AI_INDEXED,
        otel_messages=True,
    ),
    Dialect(
        "agentops",
        prefixes=("agentops.",),
        kind_rules=(("agentops.span.kind", AGENTOPS_KINDS), ("llm.request.type", LLM_REQUEST_TYPES))
        + _OTEL_RULES,
        indexed=GEN_AI_INDEXED,
        otel_messages=True,
    ),
    Dialect(
        # the indexed attributes with no vendor marker (e.g. OpenLLMetry's instrumentations alone)
        "gen_ai_indexed",
        keys=("llm.request.type",),
        prefixes=("gen_ai.prompt.", "gen_ai.completion."),
        kind_rules=(("llm.request.type", LLM_REQUEST_TYPES),) + _OTEL_RULES,
        indexed=GEN_AI_INDEXED,
        otel_messages=True,
    ),
    Dialect(
        "otel_genai",
        keys=(
            "gen_ai.operation.name",
            "gen_ai.input.messages",
            "gen_ai.output.messages",
            "gen_ai.system",
            "gen_ai.provider.name",
            "gen_ai.request.model",
        ),
        kind_rules=_OTEL_RULES,
        otel_messages=True,
    ),
)

UNKNOWN: Final = Dialect("unknown")

#: Old or vendor names -> the canonical OTel GenAI name; copied when the canonical one is absent
#: (the source attribute is kept too: unknown and old attributes are kept verbatim).
RENAMES: Final[dict[str, tuple[str, ...]]] = {
    "gen_ai.provider.name": ("gen_ai.system", "llm.provider", "llm.system"),
    "gen_ai.request.model": ("llm.model_name", "llm.request.model"),
    "gen_ai.response.model": ("llm.response.model",),
    "gen_ai.usage.input_tokens": (
        "gen_ai.usage.prompt_tokens",
        "llm.token_count.prompt",
        "llm.usage.prompt_tokens",
    ),
    "gen_ai.usage.output_tokens": (
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
        "llm.usage.completion_tokens",
    ),
    "gen_ai.response.id": ("llm.response.id",),
    "gen_ai.system_instructions": (),
}

#: Canonical tool-span attributes and where other dialects keep them.
TOOL_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "gen_ai.tool.name": ("tool.name", "traceloop.entity.name", "agentops.entity.name"),
    "gen_ai.tool.call.id": ("tool_call.id", "tool.id"),
    "gen_ai.tool.call.arguments": (
        "input.value",
        "tool.parameters",
        "traceloop.entity.input",
        "agentops.entity.input",
    ),
    "gen_ai.tool.call.result": ("output.value", "traceloop.entity.output", "agentops.entity.output"),
}

#: Attributes that make a span look like an LLM call even without messages.
MODEL_KEYS: Final = ("gen_ai.request.model", "gen_ai.response.model", "llm.model_name", "llm.request.model")

#: Token ids and log-probabilities sent as attributes (lists, or JSON arrays in a string).
PROMPT_TOKEN_IDS: Final = ("prompt_token_ids", "gen_ai.prompt_token_ids", "llm.hosted_vllm.prompt_token_ids")
RESPONSE_TOKEN_IDS: Final = (
    "response_token_ids",
    "gen_ai.response_token_ids",
    "completion_token_ids",
    "llm.hosted_vllm.response_token_ids",
)
RESPONSE_LOGPROBS: Final = ("response_logprobs", "gen_ai.response.logprobs", "logprobs")

#: Rollout / attempt ids: span attributes first, then resource attributes, in this order.
ROLLOUT_ID_KEYS: Final = (
    "agentstream.rollout.id",
    "agentstream.rollout_id",
    "agentlightning.rollout_id",
    "rollout_id",
    "rollout.id",
)
ATTEMPT_ID_KEYS: Final = (
    "agentstream.attempt.id",
    "agentstream.attempt_id",
    "agentlightning.attempt_id",
    "attempt_id",
    "attempt.id",
)

#: Prompt templates (OpenInference) -> the call's resource.
TEMPLATE_TEXT: Final = "llm.prompt_template.template"
TEMPLATE_VERSION: Final = "llm.prompt_template.version"

# --- rewards --------------------------------------------------------------------------------------------
EVALUATION_EVENT: Final = "gen_ai.evaluation.result"
EVALUATION_NAME: Final = "gen_ai.evaluation.name"
EVALUATION_SCORE: Final = "gen_ai.evaluation.score.value"
EVALUATION_LABEL: Final = "gen_ai.evaluation.score.label"
EVALUATION_EXPLANATION: Final = "gen_ai.evaluation.explanation"

#: Agent Lightning annotations: ``agentlightning.reward.<k>.name`` / ``.value``, links
#: ``agentlightning.link.<k>.key_match`` / ``.value_match`` (gen_ai.response.id or span_id targets).
AGL_REWARD_PREFIX: Final = "agentlightning.reward"
AGL_LINK_PREFIX: Final = "agentlightning.link"
#: AGL's name of a one-dimensional reward; it becomes our default dimension, "reward".
AGL_SCALAR_NAME: Final = "primary"
#: On the first of several AGL dimensions (AGL's primary one): a hint for credit assignment.
PRIMARY_MARK: Final = "agentstream.reward.primary"
#: Agent Lightning's older reward span carries the value in a plain ``reward`` attribute.
AGL_OLD_REWARD_SPANS: Final = ("agentlightning.reward",)
AGL_OLD_REWARD_KEY: Final = "reward"
#: AgentOps task outputs that are rewards: JSON ``{"type": "reward", "value": ...}``.
AGENTOPS_OUTPUT_KEYS: Final = ("agentops.task.output", "agentops.entity.output")

#: Score attributes of OpenInference EVALUATOR spans and ``evaluate`` operations.
EVALUATOR_SCORES: Final = (EVALUATION_SCORE, "eval.score", "evaluation.score", "score")
EVALUATOR_NAMES: Final = (EVALUATION_NAME, "eval.name", "evaluation.name")
EVALUATOR_EXPLANATIONS: Final = (EVALUATION_EXPLANATION, "eval.explanation", "evaluation.explanation")

# --- messages elsewhere -----------------------------------------------------------------------------
#: The span event (or log record) of the current conventions carrying the messages.
INFERENCE_DETAILS_EVENT: Final = "gen_ai.client.inference.operation.details"
#: Older per-message span events (content in a ``content`` attribute / the body), and the
#: deprecated prompt/completion content events (JSON in ``gen_ai.prompt`` / ``gen_ai.completion``).
MESSAGE_EVENTS: Final[dict[str, str]] = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
CHOICE_EVENT: Final = "gen_ai.choice"
CONTENT_EVENTS: Final[dict[str, tuple[str, str]]] = {
    "gen_ai.content.prompt": ("gen_ai.prompt", "input"),
    "gen_ai.content.completion": ("gen_ai.completion", "output"),
}
#: Log records whose messages belong to a span we cannot reach from a stateless normaliser.
SEPARATE_MESSAGE_LOGS: Final = (INFERENCE_DETAILS_EVENT, *MESSAGE_EVENTS, CHOICE_EVENT)
SEPARATE_MESSAGES_REASON: Final = (
    "messages in a separate log record are not merged into their span; set "
    "OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental and capture content on spans"
)

#: Marks a judge call on the span itself (ancestry is resolved downstream by the joiner): a true
#: ``agentstream.judge``, or an evaluation's name on the LLM span.
JUDGE_FLAG: Final = "agentstream.judge"
JUDGE_KEYS: Final = (JUDGE_FLAG, EVALUATION_NAME)
