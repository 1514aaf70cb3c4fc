"""The bundled local LLM server (llama.cpp, Gemma 3 270M): log-probabilities only when asked.

By default the server skips the output layer on prompt tokens (prompts read about 3x faster, see
benchmarks/local_llm.py), so a request for log-probabilities is refused with a clear error instead
of answering; ``LocalLLMServer(logprobs=True)`` serves them.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from agentstream.serving.llama_cpp import GEMMA_MODEL, LocalLLMServer

pytestmark = pytest.mark.integration

PROMPT = 'Ticket: I was charged twice this month.\nAction: create_ticket({"queue": "'


def _client(server: LocalLLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)


def test_the_default_server_completes_and_refuses_logprobs(tmp_path: Path) -> None:
    with LocalLLMServer(log_path=tmp_path / "llm.log", threads=1) as server:
        client = _client(server)
        answer = client.completions.create(model=GEMMA_MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
        assert answer.choices[0].text
        with pytest.raises(openai.APIStatusError) as refused:
            client.completions.create(
                model=GEMMA_MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1
            )
        assert "logits_all" in str(refused.value)  # llama.cpp says why
        # nothing is answered without the server's key, which is on no command line
        for key in ("local", server.api_key[:-1]):
            stranger = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                stranger.completions.create(model=GEMMA_MODEL, prompt=PROMPT, max_tokens=1)
            with pytest.raises(openai.AuthenticationError):
                stranger.models.list()
        assert server.pid is not None
        command_line = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert b"--config_file" in command_line and server.api_key.encode() not in command_line
        config_file = command_line.split(b"\0")[command_line.split(b"\0").index(b"--config_file") + 1]
        assert not Path(config_file.decode()).exists()  # read by the server, then deleted


def test_a_server_asked_for_logprobs_serves_them(tmp_path: Path) -> None:
    with LocalLLMServer(log_path=tmp_path / "llm.log", threads=1, logprobs=True) as server:
        answer = _client(server).completions.create(
            model=GEMMA_MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1
        )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs
    assert all(lp is not None and lp <= 0.0 for lp in logprobs.token_logprobs)
