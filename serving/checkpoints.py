"""Checkpoints of LLM resource versions: what a request names, where a version's weights are, and
loading them (a full checkpoint, or a LoRA adapter merged into its base) into a small LRU."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentstream.schemas import ResourceKind, ResourceVersion

logger = logging.getLogger(__name__)

_MODEL = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+?)(?::v?(?P<version>\d+)|@(?P<label>[A-Za-z0-9_.\-]+))?$")


class CheckpointError(ValueError):
    """A version that cannot be served: no local checkpoint folder, or one that does not load."""


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


@dataclass
class LoadedModel:
    """One version in memory: the model, its tokenizer, and what it is served as."""

    name: str
    version: ResourceVersion
    model: Any
    tokenizer: Any
    device: str
    #: stop-string criteria by stop strings (see :meth:`stop_criteria`)
    _stops: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    def stop_criteria(self, stop: tuple[str, ...]) -> Any:
        """transformers' ``StopStringCriteria`` for ``stop``, made once per model: making one maps
        every token of the vocabulary against the strings (about 2.5 s per request for Gemma's 262k
        tokens on 2 cores, against 1 s for the whole generation), and a made one holds no state
        between calls. Requests are generated one at a time (``ModelService``)."""
        criteria = self._stops.get(stop)
        if criteria is None:
            from transformers import StopStringCriteria

            criteria = StopStringCriteria(self.tokenizer, list(stop))
            if len(self._stops) >= 16:  # a client varying its stop strings must not grow this for ever
                self._stops.pop(next(iter(self._stops)))
            self._stops[stop] = criteria
        return criteria

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
