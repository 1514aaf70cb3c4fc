"""An agent instrumented with OpenInference's OpenAI instrumentation (``llm.input_messages.N.*``
attributes), scored the Agent Lightning way: an ``agentlightning.reward.0.name/value`` span."""

from __future__ import annotations

import openai
from openinference.instrumentation.openai import OpenAIInstrumentor
from opentelemetry import trace

from tests.agents.otlp_agent import MAX_TOKENS, agl_reward, api_key, arguments, finish, score, tracer_provider


def main() -> None:
    args = arguments(__doc__ or "")
    provider = tracer_provider(args)
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    client = openai.OpenAI(base_url=args.base_url, api_key=api_key(args))
    with trace.get_tracer("math-agent").start_as_current_span("math agent") as root:
        prompts = ["Q: What is 1 + 1?\nA:", "Q: What is 3 + 3?\nA:"]
        outputs = []
        for prompt in prompts:
            response = client.chat.completions.create(
                model=args.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=MAX_TOKENS,
                temperature=0.0,
            )
            outputs.append(response.choices[0].message.content or "")
        value = score(outputs[-1])
        agl_reward({"reward": value})
        trace_id = format(root.get_span_context().trace_id, "032x")
    finish(
        provider,
        args,
        {"trace_id": trace_id, "prompts": prompts, "outputs": outputs, "rewards": {"reward": value}},
    )


if __name__ == "__main__":
    main()
