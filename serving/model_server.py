"""The local model server: an LLM resource's checkpoints behind an OpenAI-compatible API, on CPU.

    server = ModelServer(settings, ["support-model"]).start()     # or `agentstream serve-model`
    client = openai.OpenAI(base_url=server.base_url, api_key=server.token)
    client.completions.create(model="support-model:v2", prompt="Ticket: ...", logprobs=0,
                              extra_body={"return_token_ids": True})

A request's ``model`` names what to serve: ``NAME`` (the version the default label, ``production``,
points at), ``NAME:vN`` or ``NAME:N`` (that version), ``NAME@label`` (the version of that label).
The server follows the resource topics, so a newly published version or a moved label is served by
the next request, with no restart of the server or of the runners that call it; the response's
``model`` field names the exact version that answered (``NAME:vN``). Runners pin it the same way:
``model=f"{name}:v{rollout.resource(name).version}"``.

A version's ``uri`` is a local folder: a full Hugging Face checkpoint, or a peft LoRA adapter whose
base model is ``config["base_model"]`` (else the adapter's own ``base_model_name_or_path``); it is
merged into the base when loaded. Versions are loaded on first use and kept in a small LRU
(``model_server.cache_size``); when the default label moves, its new version is loaded in the
background so the first request after a promotion does not wait for it.

Endpoints: ``GET /v1/models``, ``POST /v1/completions`` (prompt as text, texts, token ids or lists of
them; ``max_tokens``, ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``logprobs``),
``POST /v1/chat/completions`` (through the tokenizer's chat template; ``logprobs``,
``top_logprobs``), ``GET /health``. Every route but ``/health`` needs ``Authorization: Bearer
<token>`` (an OpenAI client's ``api_key``; ``model_server.require_token``): the token lives in
``<data_dir>/secrets/model-server.token`` (0600, made on first start), never in a log or an
environment. Like vLLM with ``return_token_ids: true`` a response carries
the sampled ``token_ids`` on each choice and the ``prompt_token_ids`` (on each choice of a text
completion, on the completion of a chat), which is what the SDK's OpenAI capture records on spans.
Logprobs are the model's raw log-softmax (before temperature and top-p), as vLLM reports them by
default. ``stream: true`` is answered as server-sent events carrying the whole generation in one
chunk per choice. Not supported (a clear 400): ``echo``, ``suffix``, ``best_of > n``.

Generation runs one request at a time: the server is meant for a CPU and small models (tests, demos,
a first trained checkpoint); on GPU, serve the same versions with vLLM (``serving/vllm.py``).

This module holds the HTTP app and the server; naming and loading versions is in ``checkpoints``,
generation in ``generation``, the OpenAI request and response shapes in ``openai_protocol`` and
resolving, preloading and answering requests in ``model_service``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentstream.process.http import BackgroundServer, http_url
from agentstream.process.metrics import OpsServer, start_ops_server
from agentstream.process.ports import listening_socket
from agentstream.process.secrets import bearer_authorized, ensure_secret, secret_path
from agentstream.resources.store import ResourceStore
from agentstream.serving.checkpoints import (
    CheckpointError,
    LoadedModel,
    ModelRef,
    checkpoint_path,
    load_checkpoint,
    parse_model,
    served_name,
)
from agentstream.serving.generation import Sampling, generate
from agentstream.serving.model_service import ModelService
from agentstream.serving.openai_protocol import (
    ChatRequest,
    CompletionRequest,
    OpenAIRequest,
    RequestError,
    event_stream,
    stream_chunks,
)
from agentstream.settings import Settings

logger = logging.getLogger(__name__)

MODEL_SERVER_TOKEN = "model-server.token"

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "ModelRef",
    "ModelServer",
    "ModelService",
    "Sampling",
    "checkpoint_path",
    "create_app",
    "generate",
    "load_checkpoint",
    "parse_model",
    "served_name",
    "server_token",
    "token_file",
]


def token_file(settings: Settings) -> Path:
    """The file holding the model server's bearer token."""
    return settings.model_server.token_file or secret_path(settings.data_dir, MODEL_SERVER_TOKEN)


def server_token(settings: Settings) -> str | None:
    """The bearer token clients must send as their ``api_key`` (made if missing), or None when
    ``model_server.require_token`` is off."""
    return ensure_secret(token_file(settings)) if settings.model_server.require_token else None


def create_app(service: ModelService, token: str | None = None) -> Starlette:
    """The OpenAI-compatible routes over a :class:`ModelService`; all but ``/health`` need
    ``Authorization: Bearer <token>`` unless ``token`` is None."""

    def refused(request: Request) -> Response | None:
        if bearer_authorized(request.headers.get("authorization"), token):
            return None
        response = RequestError(401, "missing or wrong api key (Authorization: Bearer <token>)").response()
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def models(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        return JSONResponse({"object": "list", "data": service.models()})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "loaded": service.cache.loaded(), "requests": service.requests})

    def endpoint(
        model: type[OpenAIRequest], run: Callable[[Any], dict[str, Any]], chat: bool
    ) -> Callable[..., Any]:
        async def handle(request: Request) -> Response:
            if (refusal := refused(request)) is not None:
                return refusal
            try:
                try:
                    body = await request.json()
                    parsed = model.model_validate(body)
                except ValidationError as e:
                    first = e.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    raise RequestError(400, f"{where}: {first['msg']}", param=where) from None
                except ValueError:
                    raise RequestError(400, "the body is not JSON") from None
                response = await run_in_threadpool(run, parsed)
            except RequestError as e:
                return e.response()
            except Exception as e:  # a generation failure answers this request only
                logger.exception("request failed")
                return RequestError(500, f"{type(e).__name__}: {e}", "server_error").response()
            if parsed.stream:
                include_usage = bool((parsed.stream_options or {}).get("include_usage"))
                return StreamingResponse(
                    event_stream(stream_chunks(response, chat, include_usage)), media_type="text/event-stream"
                )
            return JSONResponse(response)

        return handle

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/health", health),
            Route(
                "/v1/completions", endpoint(CompletionRequest, service.complete, chat=False), methods=["POST"]
            ),
            Route("/v1/chat/completions", endpoint(ChatRequest, service.chat, chat=True), methods=["POST"]),
        ]
    )


class ModelServer:
    """Serves an LLM resource's checkpoint versions over HTTP (uvicorn on a background thread, or in
    the foreground with :meth:`run`).

    Args:
        settings: Kafka (the resource topics) and the ``model_server`` group.
        resources: the resources whose versions are served (requests name one of them).
        store: a resource store to follow; default one of its own.
        host, port: override ``model_server.host`` / ``.port`` (port 0 picks a free one).

    ``token`` is what clients send as their ``api_key`` (None when ``model_server.require_token``
    is off); it is read from, or made in, :func:`token_file`.
    """

    def __init__(
        self,
        settings: Settings,
        resources: Sequence[str],
        *,
        store: ResourceStore | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        if not resources:
            raise ValueError("serve at least one resource")
        self.settings = settings
        self.config = settings.model_server
        self.host = host if host is not None else self.config.host
        self._requested_port = port if port is not None else self.config.port
        self._owns_store = store is None
        self.store = store if store is not None else ResourceStore(settings, who="model-server")
        self.service = ModelService(self.store, resources, self.config)
        self.token = server_token(settings)
        self.port: int | None = None
        self._http: BackgroundServer | None = None
        self._ops: OpsServer | None = None  # /metrics, /healthz, /readyz

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``: what OpenAI clients take as ``base_url``."""
        if self.port is None:
            raise RuntimeError("the model server is not started")
        return f"{http_url(self.host, self.port)}/v1"

    def _prepare(self) -> BackgroundServer:
        # The ML stack is imported here, on the caller's thread: imported for the first time on a
        # loader thread while the caller imports (say) httpx, a module could be seen half-initialised.
        import peft  # noqa: F401
        import transformers

        transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.GenerationConfig  # noqa: B018
        self.store.open()
        self.service.watch()
        sock = listening_socket(self.host, self._requested_port)
        self._http = BackgroundServer(
            create_app(self.service, self.token), sock, name="model server", lifespan="off"
        )
        self.port = self._http.port
        self._ops = start_ops_server(
            self.settings.metrics,
            self.settings.data_dir,
            component="model-server",
            registry=CollectorRegistry(),
        )
        return self._http

    def start(self, timeout: float = 30.0) -> Self:
        """Serve on a background thread; returns once connections are accepted."""
        try:
            self._prepare().start(timeout)
        except RuntimeError:
            self.stop()
            raise
        logger.info("model server on %s serves %s", self.base_url, self.service.resources)
        return self

    def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve in the foreground until SIGINT/SIGTERM (uvicorn handles them); ``on_ready(base_url)``
        is called once the port is bound."""
        http = self._prepare()
        if on_ready is not None:
            on_ready(self.base_url)
        try:
            http.run()
        finally:
            self._close()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish in-flight requests, stop serving and following the resources."""
        if self._http is not None:
            self._http.stop(timeout)
            self._http = None
        self._close()

    def _close(self) -> None:
        if self._ops is not None:
            self._ops.stop()
            self._ops = None
        self.service.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
