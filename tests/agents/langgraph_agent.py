"""A small LangGraph agent (plan, then answer) on ``langchain-openai``, instrumented with
OpenInference's LangChain instrumentation, scored with a two-dimension Agent Lightning reward."""

from __future__ import annotations

from typing import Any

from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from openinference.instrumentation.langchain import LangChainInstrumentor
from opentelemetry import trace

from tests.agents.otlp_agent import MAX_TOKENS, agl_reward, api_key, arguments, finish, score, tracer_provider


def main() -> None:
    args = arguments(__doc__ or "")
    provider = tracer_provider(args)
    LangChainInstrumentor().instrument(tracer_provider=provider)
    # langchain-openai sends max_completion_tokens, which llama.cpp's server ignores: max_tokens it reads
    llm = ChatOpenAI(
        base_url=args.base_url,
        api_key=api_key(args),  # type: ignore[arg-type]
        model=args.model,
        temperature=0.0,
        extra_body={"max_tokens": MAX_TOKENS},
    )

    def plan(state: MessagesState) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}

    def answer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [llm.invoke([*state["messages"], ("user", "Now the number only.")])]}

    graph = StateGraph(MessagesState)
    graph.add_node("plan", plan)
    graph.add_node("answer", answer)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "answer")
    graph.add_edge("answer", END)
    agent = graph.compile()
    question = "Q: What is 5 + 2?\nA:"
    with trace.get_tracer("math-agent").start_as_current_span("rollout") as root:
        state = agent.invoke({"messages": [("user", question)]})
        outputs = [str(m.content) for m in state["messages"][1:] if m.type == "ai"]
        rewards = {"task_success": score(outputs[-1]), "format": 1.0 if len(outputs[-1]) < 80 else 0.0}
        agl_reward(rewards)
        trace_id = format(root.get_span_context().trace_id, "032x")
    finish(
        provider,
        args,
        {"trace_id": trace_id, "prompts": [question], "outputs": outputs, "rewards": rewards},
    )


if __name__ == "__main__":
    main()
