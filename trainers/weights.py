"""What every weight trainer shares: its config fields and the train-save-publish step per window.

An algorithm (``trainers/sft.py``, ``trainers/rl.py``) is a config dataclass that extends
:class:`WeightsConfig` and a trainer that extends :class:`WeightTrainer` with two methods: the rows
it learns from (:meth:`WeightTrainer.rows`) and the trl trainer that learns them
(:meth:`WeightTrainer.trl_trainer`). Everything else (the stream, loading the policy, progress,
the checkpoint folder, the published version and its lineage) happens here and in
:mod:`.runtime` / :mod:`.checkpoint`, the same way for all of them.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from agentstream.schemas import CANDIDATE, ResourceVersion
from agentstream.settings import Settings

from .checkpoint import load_policy, output_root, publish_checkpoint, reserve_checkpoint_dir, save_checkpoint
from .config_fields import API_ONLY, check_choice, check_ranges, option
from .data import FORMATS
from .runtime import TripletFilter, TripletWindow, WindowOutcome, WindowTrainer, run_trainer
from .trl_setup import control_callback, device_args, quiet

if TYPE_CHECKING:
    from rich.progress import Progress

    from agentstream.resources.store import ResourceStore

logger = logging.getLogger(__name__)

__all__ = ["WeightTrainer", "WeightsConfig"]


@dataclass(kw_only=True)
class WeightsConfig:
    """Fields every weight trainer has; ``None`` means "from ``settings.trainer``" or "trl's default".

    A field with an :func:`~.config_fields.option` is an option of every ``agentstream train``
    command (the algorithm's own fields come first there).
    """

    resource_name: str = field(
        metadata=option("The LLM resource trained versions are published to.", flag="--resource")
    )
    #: a Hugging Face model folder (or hub id available offline) training starts from
    base_model: str = field(metadata=option("Model folder (or offline hub id) to start from."))
    #: consumer group suffix and ``lineage["trainer"]``; default ``<algorithm>-<resource_name>``
    trainer_name: str | None = field(
        default=None,
        metadata=option(
            "Trainer name: its consumer group and lineage (default ALGORITHM-RESOURCE).", flag="--name"
        ),
    )

    # -- which triplets (see TripletFilter), in windows of how many
    window_count: int | None = field(default=None, metadata=option("Triplets per window.", min=1))
    window_seconds: float | None = field(
        default=None, metadata=option("Close a window this long after its first triplet.")
    )
    task_types: tuple[str, ...] = field(
        default=(), metadata=option("Only these task types (repeat).", flag="--task-type")
    )
    modes: tuple[str, ...] | None = field(
        default=None, metadata=option("Rollout modes (repeat); default train, prod.", flag="--mode")
    )
    from_resource: str | None = field(
        default=None, metadata=option("Only triplets of LLM calls stamped with this resource.")
    )

    # -- the policy
    #: "base" (the base model every window), "latest", or a version/label of the resource to continue from
    init_from: str = field(
        default="base", metadata=option("base, latest, or a version/label to continue from.")
    )
    #: "auto" (chat template when the tokenizer has one), "messages" or "text"
    format: str = field(default="auto", metadata=option("auto, messages (chat template) or text."))
    #: LoRA through peft when lora_r > 0, else a full fine-tune
    lora_r: int = field(default=0, metadata=option("LoRA rank; 0 trains every weight.", min=0))
    lora_alpha: int | None = field(default=None, metadata=API_ONLY)
    lora_dropout: float = field(default=0.0, metadata=API_ONLY)
    lora_target_modules: list[str] | None = field(default=None, metadata=API_ONLY)

    # -- optimisation (passed to the trl config)
    max_steps: int = field(default=-1, metadata=option("Steps per window; -1: --epochs over it."))
    num_train_epochs: float = field(default=1.0, metadata=option("Epochs over each window.", flag="--epochs"))
    learning_rate: float | None = field(
        default=None, metadata=option("Learning rate (default: trl's).", flag="--lr")
    )
    per_device_train_batch_size: int = field(default=8, metadata=option(flag="--batch-size", min=1))
    gradient_accumulation_steps: int = field(default=1, metadata=API_ONLY)
    max_length: int | None = field(default=1024, metadata=option("Tokens per example.", min=8))

    # -- the result
    #: checkpoints go to ``<output_dir>/<resource_name>/v<N>``; default ``settings.trainer.output_dir``
    output_dir: Path | None = field(default=None, metadata=option("Default <data_dir>/checkpoints."))
    #: the label the published version gets (``None``: none; the caller decides what serves it)
    label: str | None = field(default=CANDIDATE, metadata=API_ONLY)
    seed: int = field(default=0, metadata=option())
    #: any other field of the algorithm's trl config (e.g. ``{"warmup_ratio": 0.1}``)
    trl_args: dict[str, Any] = field(default_factory=dict, metadata=API_ONLY)

    def __post_init__(self) -> None:
        check_ranges(self)
        check_choice(self, "format", FORMATS)


class WeightTrainer(WindowTrainer):
    """Trains one window at a time and publishes each result as a version (see the module doc)."""

    algorithm: ClassVar[str]

    def __init__(self, config: WeightsConfig, settings: Settings, store: ResourceStore | None = None) -> None:
        self.config = config
        self.settings = settings.resolved()
        self.name = config.trainer_name or f"{self.algorithm}-{config.resource_name}"
        self.resource_name = config.resource_name
        self._store = store
        self._owns_store = store is None
        self.triplet_filter = self.make_filter()

    # ---- what an algorithm defines ------------------------------------------------------------------
    def make_filter(self) -> TripletFilter:
        """Rewarded triplets of the configured modes, task types and source resource."""
        c = self.config
        return TripletFilter(
            resource_name=c.from_resource,
            task_types=tuple(c.task_types),
            modes=tuple(c.modes if c.modes is not None else self.settings.trainer.modes),
        )

    def rows(self, triplets: list[Any], tokenizer: Any) -> list[dict[str, Any]]:
        """The training rows of a window's triplets (an empty list skips the window)."""
        raise NotImplementedError

    def trl_trainer(
        self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], peft_config: Any, args: dict[str, Any]
    ) -> Any:
        """The trl trainer for these rows; ``args`` are the shared trl config fields."""
        raise NotImplementedError

    def metrics(self, trainer: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
        """Lineage metrics beyond the losses (e.g. pairs, groups)."""
        return {}

    def version_config(self) -> dict[str, str]:
        return {}

    # ---- the shared step ----------------------------------------------------------------------------
    @property
    def store(self) -> ResourceStore:
        if self._store is None:
            from agentstream.resources.store import ResourceStore

            self._store = ResourceStore(self.settings, who=f"trainer:{self.name}").open()
        return self._store

    def train_window(
        self, window: TripletWindow, stop: threading.Event | None = None, progress: Progress | None = None
    ) -> WindowOutcome:
        """Train on ``window``, save the checkpoint, publish it with its lineage (labelled ``config.label``)."""
        c = self.config
        init = self._init_version()
        model, tokenizer, peft_config = load_policy(
            c.base_model,
            init=init,
            lora_r=c.lora_r,
            lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout,
            lora_target_modules=c.lora_target_modules,
        )
        rows = self.rows(window.triplets, tokenizer)
        if not rows:
            return WindowOutcome(
                window, None, f"skipped: no {self.algorithm} examples in {len(window.triplets)} triplets"
            )
        root = Path(c.output_dir) if c.output_dir is not None else output_root(self.settings)
        scratch = root / self.resource_name / f".trl-{self.name}-{window.window_id}"
        args = self._trl_args(scratch)
        trainer = self.trl_trainer(model, tokenizer, rows, peft_config, args)
        quiet(trainer)
        trainer.add_callback(control_callback(stop, progress, f"{self.name}: training"))
        started = time.monotonic()
        trainer.train()
        seconds = time.monotonic() - started
        shutil.rmtree(scratch, ignore_errors=True)
        if stop is not None and stop.is_set():
            return WindowOutcome(window, None, "interrupted")
        adapter = (init is not None and init.config.get("adapter") == "true") or peft_config is not None
        base_model = (
            init.config.get("base_model", c.base_model) if init is not None and adapter else c.base_model
        )
        path = reserve_checkpoint_dir(root, self.resource_name, self.store)
        save_checkpoint(trainer.model, tokenizer, path)
        lineage = {
            "trainer": self.name,
            "trainer.algorithm": self.algorithm,
            "trainer.filter": self.triplet_filter.describe(),
            "init_from": (init.uri or "") if init is not None else c.base_model,
            **window.lineage(),
            **_loss_metrics(trainer.state.log_history),
            "metrics.steps": str(trainer.state.global_step),
            "metrics.examples": str(len(rows)),
            "metrics.train_seconds": f"{seconds:.3f}",
            "metrics.tokens": str(_tokens_seen(trainer)),
            **self.metrics(trainer, rows),
        }
        version = publish_checkpoint(
            self.store,
            self.resource_name,
            path,
            base_model=base_model,
            adapter=adapter,
            lineage=lineage,
            config={"algorithm": self.algorithm, **self.version_config()},
            parent_version=init.version if init is not None else None,
            label=c.label,
        )
        return WindowOutcome(window, version, "published")

    def run(
        self,
        *,
        once: bool = False,
        max_windows: int | None = None,
        stop: threading.Event | None = None,
        idle_timeout: float | None = None,
        show_progress: bool = True,
    ) -> list[WindowOutcome]:
        """Consume the triplet topic and train window after window (see :func:`.runtime.run_trainer`)."""
        try:
            return run_trainer(
                self,
                self.settings,
                self.store,
                window_count=self.config.window_count,
                window_seconds=self.config.window_seconds,
                once=once,
                max_windows=max_windows,
                stop=stop,
                idle_timeout=idle_timeout,
                show_progress=show_progress,
            )
        finally:
            self.close()

    def close(self) -> None:
        """Close the resource store this trainer opened (one passed in stays open)."""
        if self._store is not None and self._owns_store:
            self._store.close()
            self._store = None

    # ---- internals ----------------------------------------------------------------------------------
    def _init_version(self) -> ResourceVersion | None:
        ref = self.config.init_from
        if ref == "base":
            return None
        if ref == "latest":
            names = self.store.names()
            if self.resource_name not in names or not self.store.state(self.resource_name).versions:
                return None
            return self.store.get(self.resource_name, self.store.state(self.resource_name).latest)
        return self.store.get(self.resource_name, ref)

    def _trl_args(self, scratch: Path) -> dict[str, Any]:
        c = self.config
        args: dict[str, Any] = {
            "output_dir": str(scratch),
            "max_steps": c.max_steps,
            "num_train_epochs": c.num_train_epochs,
            "per_device_train_batch_size": c.per_device_train_batch_size,
            "gradient_accumulation_steps": c.gradient_accumulation_steps,
            "seed": c.seed,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,  # our own progress bar instead
            "dataloader_num_workers": 0,
            **device_args(),
        }
        if c.learning_rate is not None:
            args["learning_rate"] = c.learning_rate
        args.update(c.trl_args)
        return args


def _loss_metrics(history: list[dict[str, Any]]) -> dict[str, str]:
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if not losses:
        return {}
    return {
        "metrics.train_loss_first": f"{losses[0]:.6g}",
        "metrics.train_loss_last": f"{losses[-1]:.6g}",
        "metrics.train_loss_mean": f"{sum(losses) / len(losses):.6g}",
    }


def _tokens_seen(trainer: Any) -> int:
    """Tokens trained on (non-padding): trl logs them as ``num_tokens``; transformers may count them too."""
    logged = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    return int(max(logged, default=0) or getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
