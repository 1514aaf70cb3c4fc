"""How fast the bundled local LLM server reads a prompt, with and without log-probabilities.

    python benchmarks/local_llm.py --json results/local_llm.json

llama-cpp-python's server computes logits for every prompt token when ``logits_all`` is on (its
default), which ``logprobs=`` requests need. Gemma 3 270M's output layer (a 262k-token vocabulary)
then costs more than the rest of the model. ``LocalLLMServer`` turns it off unless asked
(``logprobs=True``). Measures, per setting (JSON keys under ``logprobs_off`` / ``logprobs_on``):

* ``prompt_tokens``: the prompt's length (eight demonstrations and a ticket, as the demo's
  retrieving prompt has);
* ``s_per_request``: median wall time of one greedy completion (8 tokens at most), over the
  ``--requests`` measured after one warm-up;
* ``prompt_ms_per_token``: the server's own prompt-evaluation figure (median, from its log).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from agentstream.examples.support_agent import format_call
from agentstream.examples.tickets import load_tickets
from agentstream.serving.llama_cpp import GEMMA_MODEL, LocalLLMServer

_PROMPT_EVAL = re.compile(r"prompt eval time =\s+([\d.]+) ms /\s+(\d+) tokens")


def _prompts(n: int) -> list[str]:
    train = load_tickets("train")
    prompts = []
    for i in range(n):
        # a different prompt each time: the server's prefix cache must not answer from memory
        demos = train[i * 8 : i * 8 + 8]
        ticket = train[-1 - i]
        prompts.append(
            "".join(f"Ticket: {d.text}\nAction: {format_call(d.queue, d.priority)}\n\n" for d in demos)
            + f'Ticket: {ticket.text}\nAction: create_ticket({{"queue": "'
        )
    return prompts


def measure(logprobs: bool, requests: int) -> dict[str, Any]:
    import openai

    log = Path(tempfile.mkdtemp(prefix="agentstream-llm-bench-")) / "llm.log"
    prompts = _prompts(requests + 1)
    with LocalLLMServer(log_path=log, logprobs=logprobs) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
        seconds = []
        for i, prompt in enumerate(prompts):
            started = time.perf_counter()
            client.completions.create(
                model=GEMMA_MODEL, prompt=prompt, max_tokens=8, temperature=0, stop=['"', "\n"]
            )
            if i:  # the first request warms the server up
                seconds.append(time.perf_counter() - started)
    evals = [(float(ms), int(tokens)) for ms, tokens in _PROMPT_EVAL.findall(log.read_text())][1:]
    return {
        "prompt_tokens": round(statistics.median(t for _, t in evals)),
        "s_per_request": round(statistics.median(seconds), 3),
        "prompt_ms_per_token": round(statistics.median(ms / t for ms, t in evals), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    figures = {
        "logprobs_off": measure(False, args.requests),
        "logprobs_on": measure(True, args.requests),
    }
    figures["speedup"] = round(
        figures["logprobs_on"]["s_per_request"] / figures["logprobs_off"]["s_per_request"], 2
    )
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    main()
