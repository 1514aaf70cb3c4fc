"""The model server's service: resolves a request's ``model`` through the resource store, follows the
default label (preloading the version it moves to) and runs generations, one at a time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentstream.resources.store import ResourceStore
from agentstream.schemas import ResourceLabel, ResourceVersion
from agentstream.serving.checkpoints import (
    CheckpointCache,
    CheckpointError,
    LoadedModel,
    checkpoint_path,
    load_checkpoint,
    parse_model,
    served_name,
)
from agentstream.serving.generation import Sampling, generate
from agentstream.serving.openai_protocol import (
    ChatRequest,
    CompletionRequest,
    RequestError,
    Usage,
    chat_logprobs,
    completion_logprobs,
    envelope,
    model_card,
    prompt_token_lists,
    stop_list,
    text_content,
)
from agentstream.settings import ModelServerSettings

logger = logging.getLogger(__name__)


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
                cards.append(model_card(served_name(version), version, servable[number]))
            for label, event in sorted(state.labels.items()):
                if event.version in servable:
                    version = state.versions[event.version]
                    alias = name if label == self.config.default_label else f"{name}@{label}"
                    cards.append(
                        model_card(alias, version, servable[event.version], parent=served_name(version))
                    )
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
            stop=stop_list(request.stop),
            seed=request.seed,
            top_logprobs=top,
        )

    def complete(self, request: CompletionRequest) -> dict[str, Any]:
        if request.echo or request.suffix is not None or (request.best_of or 1) > request.n:
            raise RequestError(400, "echo, suffix and best_of > n are not supported by this server")
        version = self.resolve(request.model)
        loaded = self.load(version)
        prompts = prompt_token_lists(loaded.tokenizer, request.prompt)
        sampling = self.sampling(request, request.max_tokens, request.logprobs)
        choices, usage = [], Usage()
        with self._generate:
            for p, prompt_ids in enumerate(prompts):
                usage.prompt += len(prompt_ids)
                for j, generated in enumerate(generate(loaded, prompt_ids, sampling)):
                    usage.completion += len(generated.token_ids)
                    choice: dict[str, Any] = {
                        "index": p * request.n + j,
                        "text": generated.text,
                        "logprobs": completion_logprobs(loaded.tokenizer, generated)
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
        return envelope("cmpl", "text_completion", loaded.name, choices, usage)

    def chat(self, request: ChatRequest) -> dict[str, Any]:
        version = self.resolve(request.model)
        loaded = self.load(version)
        tokenizer = loaded.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise RequestError(400, f"{loaded.name} has no chat template: use /v1/completions", param="model")
        messages = [{**m, "content": text_content(m.get("content"))} for m in request.messages]
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
                "logprobs": {"content": chat_logprobs(tokenizer, generated)} if request.logprobs else None,
                "finish_reason": generated.finish_reason,
                "stop_reason": None,
            }
            if request.return_token_ids:
                choice["token_ids"] = generated.token_ids
            choices.append(choice)
        usage = Usage(len(prompt_ids), sum(len(g.token_ids) for g in generations))
        self.requests += 1
        response = envelope("chatcmpl", "chat.completion", loaded.name, choices, usage)
        if request.return_token_ids:
            response["prompt_token_ids"] = prompt_ids
        return response
