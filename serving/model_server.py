"""The local model server: an LLM resource's checkpoints behind an OpenAI-compatible API, on CPU.

    server = ModelServer(settings, ["support-model"]).start()     # or `agentstream serve-model`
    client = openai.OpenAI(base_url=server.base_url, api_key="local")
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
``top_logprobs``), ``GET /health``. Like vLLM with ``return_token_ids: true`` a response carries
the sampled ``token_ids`` on each choice and the ``prompt_token_ids`` (on each choice of a text
completion, on the completion of a chat), which is what the SDK's OpenAI capture records on spans.
Logprobs are the model's raw log-softmax (before temperature and top-p), as vLLM reports them by
default. ``stream: true`` is answered as server-sent events carrying the whole generation in one
chunk per choice. Not supported (a clear 400): ``echo``, ``suffix``, ``best_of > n``.

Generation runs one request at a time: the server is meant for a CPU and small models (tests, demos,
a first trained checkpoint); on GPU, serve the same versions with vLLM (``deploy/vllm.py``).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentstream.process.ports import listening_socket
from agentstream.resources.store import ResourceStore
from agentstream.schemas import ResourceKind, ResourceLabel, ResourceVersion
from agentstream.settings import ModelServerSettings, Settings

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "ModelRef",
    "ModelServer",
    "checkpoint_path",
    "create_app",
    "load_checkpoint",
    "parse_model",
    "served_name",
]

_MODEL = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+?)(?::v?(?P<version>\d+)|@(?P<label>[A-Za-z0-9_.\-]+))?$")
_MAX_LOGPROBS = 20


class CheckpointError(ValueError):
    """A version that cannot be served: no local checkpoint folder, or one that does not load."""


class RequestError(Exception):
    """A request the server refuses, with the OpenAI error shape's fields."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}
        return JSONResponse({"error": error}, status_code=self.status)


# ---- naming ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """What a request's ``model`` asks for: a resource and a version number or a label."""

    resource: str
    ref: int | str


def parse_model(model: str, default_label: str = "production") -> ModelRef:
    """``NAME`` (the default label), ``NAME:vN`` / ``NAME:N`` (a version) or ``NAME@label``."""
    match = _MODEL.match(model.strip())
    if match is None:
        raise ValueError(f"model {model!r} is not NAME, NAME:vN or NAME@label")
    if match["version"] is not None:
        return ModelRef(match["name"], int(match["version"]))
    return ModelRef(match["name"], match["label"] or default_label)


def served_name(version: ResourceVersion) -> str:
    """The name a version is served under, and what responses report: ``NAME:vN``."""
    return f"{version.resource_name}:v{version.version}"


def checkpoint_path(version: ResourceVersion) -> Path:
    """The local folder of a version's checkpoint (its ``uri``: a path or ``file://`` URL)."""
    uri = version.uri or ""
    path = Path(uri.removeprefix("file://")) if uri and "://" not in uri.removeprefix("file://") else None
    if version.kind is ResourceKind.PROMPT_TEMPLATE or path is None or not path.is_dir():
        raise CheckpointError(
            f"{served_name(version)} has no local checkpoint folder to serve (kind {version.kind}, uri {uri!r})"
        )
    return path


def is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def adapter_base(version: ResourceVersion, path: Path) -> str:
    """The base model of a LoRA adapter version: its ``config["base_model"]``, else the adapter's own."""
    base = version.config.get("base_model")
    if not base:
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise CheckpointError(
            f"{served_name(version)} is a LoRA adapter without a base model (config base_model)"
        )
    return str(base)


# ---- loading -----------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """One version in memory: the model, its tokenizer, and what it is served as."""

    name: str
    version: ResourceVersion
    model: Any
    tokenizer: Any
    device: str

    @property
    def eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def load_checkpoint(version: ResourceVersion, device: str = "cpu") -> LoadedModel:
    """Load a version's checkpoint folder (full model, or LoRA adapter merged into its base)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = checkpoint_path(version)
    try:
        if is_adapter(path):
            from peft import PeftModel

            base = adapter_base(version, path)
            model = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(base), path
            ).merge_and_unload()
            tokenizer_source = path if (path / "tokenizer_config.json").is_file() else base
        else:
            model = AutoModelForCausalLM.from_pretrained(path)
            tokenizer_source = path
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    except CheckpointError:
        raise
    except Exception as e:  # transformers and peft raise many kinds for a broken folder
        raise CheckpointError(f"{served_name(version)}: cannot load {path}: {type(e).__name__}: {e}") from e
    model.to(device)
    model.eval()
    return LoadedModel(served_name(version), version, model, tokenizer, device)


class CheckpointCache:
    """Versions in memory, least recently used evicted; each version is loaded once even when
    several requests ask for it at the same moment."""

    def __init__(self, size: int, loader: Callable[[ResourceVersion], LoadedModel]) -> None:
        self.size = size
        self._loader = loader
        self._models: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, version: ResourceVersion) -> LoadedModel:
        key = (version.resource_name, version.version)
        with self._lock:
            loaded = self._models.get(key)
            if loaded is not None:
                self._models.move_to_end(key)
                return loaded
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                loaded = self._models.get(key)
            if loaded is None:
                loaded = self._loader(version)
                with self._lock:
                    self.loads += 1
                    self._models[key] = loaded
                    while len(self._models) > self.size:
                        evicted, _ = self._models.popitem(last=False)
                        logger.info("unloaded %s:v%d (cache of %d)", evicted[0], evicted[1], self.size)
            with self._lock:
                self._loading.pop(key, None)
                self._models.move_to_end(key)
        return loaded

    def loaded(self) -> list[str]:
        with self._lock:
            return [f"{name}:v{number}" for name, number in self._models]


# ---- generation --------------------------------------------------------------------------------------
@dataclass
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: list[str]
    seed: int | None
    top_logprobs: int | None  # None: no logprobs asked for


@dataclass
class Generated:
    """One choice: the sampled tokens with their logprobs, and the text they decode to."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    text: str
    finish_reason: str


def generate(loaded: LoadedModel, prompt_ids: list[int], sampling: Sampling) -> list[Generated]:
    """``sampling.n`` continuations of one prompt, with each sampled token's raw logprob."""
    import torch
    from transformers import GenerationConfig

    model, tokenizer = loaded.model, loaded.tokenizer
    eos_ids = loaded.eos_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
    sample = sampling.temperature > 0
    if not sample and sampling.n > 1:  # greedy answers are all the same (and generate refuses n > 1)
        [only] = generate(loaded, prompt_ids, Sampling(**{**sampling.__dict__, "n": 1}))
        return [only] + [
            Generated(
                list(only.token_ids),
                list(only.logprobs),
                list(only.top_logprobs),
                only.text,
                only.finish_reason,
            )
            for _ in range(sampling.n - 1)
        ]
    options: dict[str, Any] = dict(
        max_new_tokens=sampling.max_tokens,
        do_sample=sample,
        num_return_sequences=sampling.n,
        return_dict_in_generate=True,
        output_logits=True,
        eos_token_id=sorted(eos_ids) or None,
        pad_token_id=pad,
    )
    if sample:
        # OpenAI semantics: temperature and nucleus only (generate's top_k=50 default is switched off)
        options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    if sampling.stop:
        options["stop_strings"] = sampling.stop
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=loaded.device)
    with torch.no_grad():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=GenerationConfig(**options),
            tokenizer=tokenizer if sampling.stop else None,
        )
        logprobs = torch.stack(output.logits, dim=1).float().log_softmax(-1)  # (n, steps, vocab)
    choices = []
    for row in range(output.sequences.shape[0]):
        ids = output.sequences[row, len(prompt_ids) :].tolist()
        finish = "length"
        for i, token in enumerate(ids):
            if token in eos_ids:
                ids, finish = ids[: i + 1], "stop"  # the EOS is part of what was sampled (as vLLM reports it)
                break
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if sampling.stop:
            ids, text, stopped = _cut_at_stop(tokenizer, ids, text, sampling.stop)
            finish = "stop" if stopped else finish
        token_logprobs = [float(logprobs[row, i, token]) for i, token in enumerate(ids)]
        top: list[list[tuple[int, float]]] = []
        if sampling.top_logprobs:
            values, indices = logprobs[row, : len(ids)].topk(sampling.top_logprobs, dim=-1)
            top = [list(zip(indices[i].tolist(), values[i].tolist())) for i in range(len(ids))]
        choices.append(Generated(ids, token_logprobs, top, text, finish))
    return choices


def _cut_at_stop(tokenizer: Any, ids: list[int], text: str, stop: list[str]) -> tuple[list[int], str, bool]:
    """Text up to the first stop string (excluded, as OpenAI does); tokens up to the one that
    completed it (included: they were sampled)."""
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if not hits:
        return ids, text, False
    at, _ = min(hits)
    for count in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:count], skip_special_tokens=True)
        if any(s in prefix for s in stop if s):
            return ids[:count], text[:at], True
    return ids, text[:at], True


# ---- requests ----------------------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # the OpenAI clients send more than we use

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    return_token_ids: bool = False


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=_MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=_MAX_LOGPROBS)
    tools: list[dict[str, Any]] | None = None


def _stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else [s for s in stop if s]


def _text_content(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise RequestError(400, f"unsupported message content {type(content).__name__}", param="messages")


# ---- the server --------------------------------------------------------------------------------------
class ModelService:
    """Resolves a request's ``model`` through the resource store and runs generations (one at a time)."""

    def __init__(self, store: ResourceStore, resources: Sequence[str], config: ModelServerSettings) -> None:
        self.store = store
        self.resources = list(dict.fromkeys(resources))
        self.config = config
        self.cache = CheckpointCache(config.cache_size, lambda v: load_checkpoint(v, config.device))
        self._generate = threading.Lock()  # one generation at a time: the CPU is the bottleneck
        self._preloader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-preload")
        self._closed = False
        self.requests = 0

    # -- versions -----------------------------------------------------------------------------------------
    def resolve(self, model: str) -> ResourceVersion:
        try:
            ref = parse_model(model, self.config.default_label)
        except ValueError as e:
            raise RequestError(404, str(e), "not_found_error", "model") from None
        if ref.resource not in self.resources:
            raise RequestError(
                404,
                f"model {model!r}: resource {ref.resource!r} is not served here; serving {self.resources}",
                "not_found_error",
                "model",
            )
        version = self.store.find(ref.resource, ref.ref)
        if version is None:
            labels = self.store.labels(ref.resource) if ref.resource in self.store.names() else {}
            raise RequestError(
                404,
                f"model {model!r}: {ref.resource} has no version or label {ref.ref!r} (labels: {labels})",
                "not_found_error",
                "model",
            )
        return version

    def load(self, version: ResourceVersion) -> LoadedModel:
        try:
            return self.cache.get(version)
        except CheckpointError as e:
            raise RequestError(400, str(e), param="model") from None

    def models(self) -> list[dict[str, Any]]:
        """Every servable version, then the label aliases that point at one."""
        cards = []
        for name in self.resources:
            if name not in self.store.names():
                continue
            state = self.store.state(name)
            servable = {}
            for number, version in sorted(state.versions.items()):
                try:
                    servable[number] = str(checkpoint_path(version))
                except CheckpointError:
                    continue
                cards.append(_card(served_name(version), version, servable[number]))
            for label, event in sorted(state.labels.items()):
                if event.version in servable:
                    version = state.versions[event.version]
                    alias = name if label == self.config.default_label else f"{name}@{label}"
                    cards.append(_card(alias, version, servable[event.version], parent=served_name(version)))
        return cards

    def watch(self) -> None:
        """Load the default label's version as soon as it moves (and now)."""
        if not self.config.preload:
            return
        self.store.on_change(self._changed)
        for name in self.resources:
            version = self.store.find(name, self.config.default_label)
            if version is not None:
                self._preload(version)

    def _changed(self, record: Any) -> None:
        if (
            isinstance(record, ResourceLabel)
            and record.resource_name in self.resources
            and record.label == self.config.default_label
            and record.version is not None
        ):
            version = self.store.find(record.resource_name, record.version)
            if version is not None:
                self._preload(version)

    def _preload(self, version: ResourceVersion) -> None:
        if self._closed:  # the store outlives the server (a shared one keeps calling listeners)
            return

        def load() -> None:
            try:
                self.cache.get(version)
                logger.info("preloaded %s", served_name(version))
            except CheckpointError as e:
                logger.warning("cannot preload %s: %s", served_name(version), e)

        self._preloader.submit(load)

    def close(self) -> None:
        self._closed = True
        self._preloader.shutdown(wait=False, cancel_futures=True)

    # -- generation ---------------------------------------------------------------------------------------
    def sampling(
        self, request: CompletionRequest | ChatRequest, max_tokens: int | None, top: int | None
    ) -> Sampling:
        return Sampling(
            max_tokens=min(max_tokens or self.config.max_tokens, self.config.max_tokens),
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            n=request.n,
            stop=_stop_list(request.stop),
            seed=request.seed,
            top_logprobs=top,
        )

    def complete(self, request: CompletionRequest) -> dict[str, Any]:
        if request.echo or request.suffix is not None or (request.best_of or 1) > request.n:
            raise RequestError(400, "echo, suffix and best_of > n are not supported by this server")
        version = self.resolve(request.model)
        loaded = self.load(version)
        prompts = _prompt_ids(loaded.tokenizer, request.prompt)
        sampling = self.sampling(request, request.max_tokens, request.logprobs)
        choices, usage = [], _Usage()
        with self._generate:
            for p, prompt_ids in enumerate(prompts):
                usage.prompt += len(prompt_ids)
                for j, generated in enumerate(generate(loaded, prompt_ids, sampling)):
                    usage.completion += len(generated.token_ids)
                    choice: dict[str, Any] = {
                        "index": p * request.n + j,
                        "text": generated.text,
                        "logprobs": _completion_logprobs(loaded.tokenizer, generated)
                        if request.logprobs is not None
                        else None,
                        "finish_reason": generated.finish_reason,
                        "stop_reason": None,
                    }
                    if request.return_token_ids:
                        choice["prompt_token_ids"] = prompt_ids
                        choice["token_ids"] = generated.token_ids
                    choices.append(choice)
        self.requests += 1
        return _envelope("cmpl", "text_completion", loaded.name, choices, usage)

    def chat(self, request: ChatRequest) -> dict[str, Any]:
        version = self.resolve(request.model)
        loaded = self.load(version)
        tokenizer = loaded.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise RequestError(400, f"{loaded.name} has no chat template: use /v1/completions", param="model")
        messages = [{**m, "content": _text_content(m.get("content"))} for m in request.messages]
        try:
            text = tokenizer.apply_chat_template(
                messages, tools=request.tools, add_generation_prompt=True, tokenize=False
            )
        except Exception as e:  # jinja errors of a template that refuses these messages
            raise RequestError(
                400, f"the chat template refused the messages: {e}", param="messages"
            ) from None
        prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
        top = (request.top_logprobs or 0) if request.logprobs else None
        sampling = self.sampling(request, request.max_completion_tokens or request.max_tokens, top)
        with self._generate:
            generations = generate(loaded, prompt_ids, sampling)
        choices = []
        for i, generated in enumerate(generations):
            choice: dict[str, Any] = {
                "index": i,
                "message": {"role": "assistant", "content": generated.text},
                "logprobs": {"content": _chat_logprobs(tokenizer, generated)} if request.logprobs else None,
                "finish_reason": generated.finish_reason,
                "stop_reason": None,
            }
            if request.return_token_ids:
                choice["token_ids"] = generated.token_ids
            choices.append(choice)
        usage = _Usage(len(prompt_ids), sum(len(g.token_ids) for g in generations))
        self.requests += 1
        response = _envelope("chatcmpl", "chat.completion", loaded.name, choices, usage)
        if request.return_token_ids:
            response["prompt_token_ids"] = prompt_ids
        return response


@dataclass
class _Usage:
    prompt: int = 0
    completion: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        }


def _envelope(
    prefix: str, kind: str, model: str, choices: list[dict[str, Any]], usage: _Usage
) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage.as_dict(),
    }


def _card(model_id: str, version: ResourceVersion, root: str, parent: str | None = None) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": version.created_at // 1_000_000,
        "owned_by": "agentstream",
        "root": root,
        "parent": parent,
    }


def _prompt_ids(tokenizer: Any, prompt: Any) -> list[list[int]]:
    """A completions prompt (text, texts, token ids, lists of token ids) as token id lists."""
    if isinstance(prompt, str):
        return [tokenizer(prompt).input_ids]
    if not prompt:
        raise RequestError(400, "the prompt is empty", param="prompt")
    if isinstance(prompt[0], str):
        return [tokenizer(p).input_ids for p in prompt]
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return [list(p) for p in prompt]


def _piece(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token])


def _completion_logprobs(tokenizer: Any, generated: Generated) -> dict[str, Any]:
    pieces = [_piece(tokenizer, t) for t in generated.token_ids]
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    top = (
        [
            {
                _piece(tokenizer, t): lp
                for t, lp in [(token, generated.logprobs[i]), *generated.top_logprobs[i]]
            }
            for i, token in enumerate(generated.token_ids)
        ]
        if generated.top_logprobs
        else [{} for _ in pieces]
    )
    return {
        "tokens": pieces,
        "token_logprobs": generated.logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


def _chat_logprobs(tokenizer: Any, generated: Generated) -> list[dict[str, Any]]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        piece = _piece(tokenizer, token)
        return {"token": piece, "logprob": logprob, "bytes": list(piece.encode())}

    return [
        {
            **entry(token, generated.logprobs[i]),
            "top_logprobs": [entry(t, lp) for t, lp in generated.top_logprobs[i]]
            if generated.top_logprobs
            else [],
        }
        for i, token in enumerate(generated.token_ids)
    ]


def _sse(events: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    async def stream() -> AsyncIterator[bytes]:
        for event in events:
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return stream()


def _as_stream(response: dict[str, Any], chat: bool, include_usage: bool) -> list[dict[str, Any]]:
    """A whole response as stream chunks: one per choice with all of its text, then one that ends
    it (and the usage, when asked for)."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    head = {k: response[k] for k in ("id", "created", "model")} | {"object": kind}
    chunks = []
    for choice in response["choices"]:
        body: dict[str, Any] = {
            "index": choice["index"],
            "logprobs": choice["logprobs"],
            "finish_reason": None,
        }
        if chat:
            body["delta"] = {"role": "assistant", "content": choice["message"]["content"]}
        else:
            body["text"] = choice["text"]
        for extra in ("token_ids", "prompt_token_ids"):
            if extra in choice:
                body[extra] = choice[extra]
        chunk = {**head, "choices": [body]}
        if chat and "prompt_token_ids" in response and not chunks:
            chunk["prompt_token_ids"] = response["prompt_token_ids"]
        chunks.append(chunk)
    for choice in response["choices"]:
        end: dict[str, Any] = {
            "index": choice["index"],
            "logprobs": None,
            "finish_reason": choice["finish_reason"],
        }
        end.update({"delta": {}} if chat else {"text": ""})
        chunks.append({**head, "choices": [end]})
    if include_usage:
        chunks.append({**head, "choices": [], "usage": response["usage"]})
    return chunks


def create_app(service: ModelService) -> Starlette:
    """The OpenAI-compatible routes over a :class:`ModelService`."""

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": service.models()})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "loaded": service.cache.loaded(), "requests": service.requests})

    def endpoint(
        model: type[_Request], run: Callable[[Any], dict[str, Any]], chat: bool
    ) -> Callable[..., Any]:
        async def handle(request: Request) -> Response:
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
                    _sse(_as_stream(response, chat, include_usage)), media_type="text/event-stream"
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
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``: what OpenAI clients take as ``base_url``."""
        if self.port is None:
            raise RuntimeError("the model server is not started")
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}/v1" if ":" in host else f"http://{host}:{self.port}/v1"

    def _prepare(self) -> uvicorn.Server:
        # The ML stack is imported here, on the caller's thread: imported for the first time on a
        # loader thread while the caller imports (say) httpx, a module could be seen half-initialised.
        import peft  # noqa: F401
        import transformers

        transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.GenerationConfig  # noqa: B018
        self.store.open()
        self.service.watch()
        sock = listening_socket(self.host, self._requested_port)
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.service), log_level="warning", access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        return self._server

    def start(self, timeout: float = 30.0) -> Self:
        """Serve on a background thread; returns once connections are accepted."""
        server = self._prepare()
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._socket]}, name="model-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the model server failed to start")
            time.sleep(0.01)
        logger.info("model server on %s serves %s", self.base_url, self.service.resources)
        return self

    def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve in the foreground until SIGINT/SIGTERM (uvicorn handles them); ``on_ready(base_url)``
        is called once the port is bound."""
        server = self._prepare()
        if on_ready is not None:
            on_ready(self.base_url)
        try:
            server.run(sockets=[self._socket])
        finally:
            self._close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None
        self._close()

    def _close(self) -> None:
        self.service.close()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
