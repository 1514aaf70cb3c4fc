"""An agent instrumented with OpenLLMetry's OpenAI instrumentation (``opentelemetry-instrumentation-
openai``, what ``traceloop-sdk`` runs for OpenAI clients), scored with a ``gen_ai.evaluation.result``
event on the agent's span (a rollout-level reward: no response named)."""

from __future__ import annotations

import os

os.environ.setdefault("TRACELOOP_TRACE_CONTENT", "true")  # OpenLLMetry's content switch (the default)

import openai  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.instrumentation.openai import OpenAIInstrumentor  # noqa: E402

from tests.agents.otlp_agent import (  # noqa: E402
    MAX_TOKENS,
    api_key,
    arguments,
    evaluation_result,
    finish,
    score,
    tracer_provider,
)


def main() -> None:
    args = arguments(__doc__ or "")
    provider = tracer_provider(args)
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    client = openai.OpenAI(base_url=args.base_url, api_key=api_key(args))
    with trace.get_tracer("math-agent").start_as_current_span("math_agent.workflow") as root:
        prompt = "Q: What is 6 + 1?\nA:"
        response = client.chat.completions.create(
            model=args.model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=MAX_TOKENS,
            temperature=0.0,
        )
        output = response.choices[0].message.content or ""
        value = score(output)
        evaluation_result(root, "correctness", value, None)
        trace_id = format(root.get_span_context().trace_id, "032x")
    finish(
        provider,
        args,
        {
            "trace_id": trace_id,
            "prompts": [prompt],
            "outputs": [output],
            "response_ids": [response.id],
            "rewards": {"correctness": value},
        },
    )


if __name__ == "__main__":
    main()
