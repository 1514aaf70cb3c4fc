"""Where trained weights come from and go: load a policy, save a checkpoint, publish it as a version.

Every weight trainer (SFT, KTO, DPO, GRPO) shares this path:

    model, tokenizer, start = load_policy(config.base_model, init=store.find(name, "production"), lora_r=8)
    ...train...
    path = reserve_checkpoint_dir(output_root(settings), name, store)      # <output_dir>/<name>/v<N>
    save_checkpoint(model, tokenizer, path)
    version = publish_checkpoint(store, name, path, base_model=..., adapter=..., lineage={...})

The published :class:`~agentstream.schemas.ResourceVersion` points at the folder (``uri``), says
how to load it (``config``: ``base_model``, ``adapter``) and where it came from (``lineage``: the
triplet window, the base model, the training metrics, the trainer), and is labelled ``candidate``
so that the A/B split starts sending it traffic.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentstream.schemas import CANDIDATE, ResourceKind, ResourceVersion
from agentstream.settings import Settings

if TYPE_CHECKING:
    from agentstream.resources.store import ResourceStore

logger = logging.getLogger(__name__)

__all__ = [
    "find_window_version",
    "load_policy",
    "output_root",
    "publish_checkpoint",
    "published_versions",
    "reserve_checkpoint_dir",
    "save_checkpoint",
]


def output_root(settings: Settings) -> Path:
    """Where checkpoints go: ``settings.trainer.output_dir``, default ``<data_dir>/checkpoints``."""
    return settings.trainer.output_dir or settings.data_dir / "checkpoints"


def reserve_checkpoint_dir(output_dir: Path, resource_name: str, store: ResourceStore) -> Path:
    """A new, empty ``<output_dir>/<resource>/v<N>`` for the resource's next version ``N``.

    ``N`` is a guess: a publisher racing for the same number makes the store pick ``N + 1``, and the
    version's ``uri`` (not the folder name) is what counts. Folders of versions never published
    (a trainer that died while saving) are reused.
    """
    parent = Path(output_dir) / resource_name
    parent.mkdir(parents=True, exist_ok=True)
    latest = store.state(resource_name).latest if resource_name in store.names() else 0
    number = latest + 1
    while True:
        path = parent / f"v{number}"
        if not path.exists():
            path.mkdir()
            return path
        if number > latest and not _published(store, resource_name, path):
            shutil.rmtree(path)  # a leftover of a trainer that died before publishing
            path.mkdir()
            return path
        number += 1


def _published(store: ResourceStore, resource_name: str, path: Path) -> bool:
    uri = str(path)
    return any(v.uri == uri for v in published_versions(store, resource_name))


def save_checkpoint(model: Any, tokenizer: Any, path: Path) -> Path:
    """Write the model (a full checkpoint, or only the adapter of a peft model) and its tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_policy(
    base_model: str,
    *,
    init: ResourceVersion | None = None,
    lora_r: int = 0,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.0,
    lora_target_modules: list[str] | str | None = None,
    dtype: str = "auto",
) -> tuple[Any, Any, Any]:
    """The model to train, its tokenizer, and a peft config for trl (``None`` when not needed).

    ``init`` (a version published earlier) continues from its weights: a full checkpoint is loaded
    as the model; an adapter is loaded, trainable, on its own ``base_model``. Otherwise training
    starts from ``base_model``, with a fresh LoRA adapter when ``lora_r > 0``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": dtype}
    if init is not None and init.config.get("adapter") == "true":
        from peft import PeftModel

        base = init.config.get("base_model") or base_model
        base_weights = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        adapter = PeftModel.from_pretrained(base_weights, _local(init), is_trainable=True)
        return adapter, _tokenizer(AutoTokenizer, _local(init)), None
    source = _local(init) if init is not None else base_model
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    tokenizer = _tokenizer(AutoTokenizer, source)
    peft_config = None
    if lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha or 2 * lora_r,
            lora_dropout=lora_dropout,
            target_modules=lora_target_modules or "all-linear",
            task_type="CAUSAL_LM",
        )
    return model, tokenizer, peft_config


def _tokenizer(auto: Any, source: str) -> Any:
    tokenizer = auto.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _local(version: ResourceVersion) -> str:
    uri = version.uri or ""
    path = uri.removeprefix("file://")
    if not Path(path).exists():
        raise ValueError(
            f"{version.resource_name} v{version.version}: cannot train from {uri!r}, which is not a local "
            "checkpoint folder; start from the base model instead (init_from='base')"
        )
    return path


def publish_checkpoint(
    store: ResourceStore,
    resource_name: str,
    path: Path,
    *,
    base_model: str,
    adapter: bool,
    lineage: Mapping[str, str],
    config: Mapping[str, str] | None = None,
    parent_version: int | None = None,
    label: str | None = CANDIDATE,
    kind: ResourceKind | str | None = None,
    reason: str = "",
) -> ResourceVersion:
    """Publish the checkpoint at ``path`` as a new version of ``resource_name`` (labelled ``label``).

    ``kind`` defaults to the kind of the resource's latest version (an ``llm`` resource stays one),
    else ``model_checkpoint``.
    """
    if kind is None:
        existing = published_versions(store, resource_name)
        kind = existing[-1].kind if existing else ResourceKind.MODEL_CHECKPOINT
    full_config = {"base_model": base_model, "adapter": "true" if adapter else "false", **dict(config or {})}
    full_lineage = {"base_model": base_model, **dict(lineage)}
    return store.publish(
        resource_name,
        uri=str(path),
        kind=kind,
        config=full_config,
        parent_version=parent_version,
        lineage=full_lineage,
        labels=[label] if label else [],
        reason=reason or f"trained by {lineage.get('trainer', 'a trainer')}",
        force_new=True,
    )


def published_versions(
    store: ResourceStore, resource_name: str, trainer: str | None = None
) -> list[ResourceVersion]:
    """Versions of the resource, oldest first; only those trained by ``trainer`` when given."""
    if resource_name not in store.names():
        return []
    versions = [v for _, v in sorted(store.state(resource_name).versions.items())]
    if trainer is not None:
        versions = [v for v in versions if v.lineage.get("trainer") == trainer]
    return versions


def find_window_version(store: ResourceStore, resource_name: str, window_id: str) -> ResourceVersion | None:
    """The version already trained on the window ``window_id``, if any."""
    return next(
        (v for v in published_versions(store, resource_name) if v.lineage.get("window.id") == window_id), None
    )
