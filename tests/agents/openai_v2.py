"""An agent instrumented with ``opentelemetry-instrumentation-openai-v2`` (the OTel GenAI conventions,
latest experimental: ``gen_ai.input.messages`` / ``gen_ai.output.messages`` on the span), scored with
a ``gen_ai.evaluation.result`` event naming the evaluated response (the first one)."""

from __future__ import annotations

import os

# what a user sets before instrumenting: the newest conventions, message content on the spans
os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
os.environ.setdefault("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")

import openai  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor  # noqa: E402

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
    tracer = trace.get_tracer("math-agent")
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "math"}
    with tracer.start_as_current_span("invoke_agent math", attributes=attributes) as root:
        prompts = ["Q: What is 2 + 3?\nA:", "Q: And 4 + 4?\nA:"]
        messages: list[dict[str, str]] = [{"role": "system", "content": "Answer with a number."}]
        outputs, response_ids = [], []
        for prompt in prompts:
            messages.append({"role": "user", "content": prompt})
            response = client.chat.completions.create(
                model=args.model,
                messages=messages,
                max_tokens=MAX_TOKENS,
                temperature=0.0,  # type: ignore[arg-type]
            )
            text = response.choices[0].message.content or ""
            messages.append({"role": "assistant", "content": text})
            outputs.append(text)
            response_ids.append(response.id)
        # an evaluator scoring the first answer, by its response id (the event's explicit target)
        value = score(outputs[0])
        evaluation_result(root, "correctness", value, response_ids[0])
        trace_id = format(root.get_span_context().trace_id, "032x")
    finish(
        provider,
        args,
        {
            "trace_id": trace_id,
            "prompts": prompts,
            "outputs": outputs,
            "response_ids": response_ids,
            "rewards": {"correctness": value},
        },
    )


if __name__ == "__main__":
    main()
