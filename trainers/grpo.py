"""Online GRPO: the trainer generates its own completions for real task prompts and learns from a reward.

    config = OnlineGRPOConfig(resource_name="support-llm", reward="my_rewards:routing", max_steps=200)
    result = OnlineGRPOTrainer(config, settings).train()     # publishes support-llm vN, labelled candidate

Where :mod:`.rl`'s GRPO replays logged attempts, this one samples ``num_generations`` fresh
completions per prompt with the policy being trained (trl's ``GRPOTrainer``), scores them with the
user's reward function, and takes group-relative policy-gradient steps. Generation runs on vLLM
(``use_vllm=True, vllm_mode="colocate"``: in-process, sharing the GPU) when the ``gpu`` extra is
installed and CUDA is present, else with ``model.generate`` (CPU, or GPU without vLLM);
``use_vllm=None`` picks for you, ``True``/``False`` forces it.

Prompts are real traffic:

* ``prompts="tasks"`` (default): the task inputs on the tasks topic (of the configured modes and
  task type, newest ``max_prompts`` rollouts). A task's prompt is ``prompt(task_input)`` when a
  ``prompt`` function is given, else its ``"prompt"`` (text) or ``"messages"`` (chat) field, or the
  input itself when it is a string;
* ``prompts="triplets"``: the prompts of recent triplets of the resource (through ClickHouse), the
  exact text or messages the model saw in production.

Either way the task input's fields become dataset columns, passed to the reward function as
keyword arguments (the ground truth a rule reward checks against). The reward is a callable or
``"module:function"``: trl's batch signature ``f(prompts, completions, **columns) -> list[float]``
when it has a ``completions`` parameter, else a per-completion ``f(completion, **columns) -> float``
whose ``completion`` is the answer's text.

The result is saved as a checkpoint (LoRA adapter when ``lora_r > 0``) and published as a new
version of the resource with its lineage (start version, prompts, reward, metrics), labelled
``candidate`` so the A/B split and the promotion controller take it from there.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agentstream.schemas import CANDIDATE, ResourceVersion
from agentstream.settings import Settings

from .checkpoint import load_policy, output_root, publish_checkpoint, reserve_checkpoint_dir, save_checkpoint
from .config_fields import API_ONLY, check_choice, check_ranges, named, option
from .data import FORMATS, resolve_format
from .grpo_inputs import (
    Reward,
    as_format,
    load_callable,
    prompts_from_tasks,
    prompts_from_triplets,
    reward_function,
)
from .trl_setup import device_args, quiet

if TYPE_CHECKING:
    from agentstream.resources.store import ResourceStore

logger = logging.getLogger(__name__)

__all__ = [
    "OnlineGRPOConfig",
    "OnlineGRPOResult",
    "OnlineGRPOTrainer",
    "load_callable",
    "prompts_from_tasks",
    "prompts_from_triplets",
    "reward_function",
    "vllm_available",
]


@dataclass(kw_only=True)
class OnlineGRPOConfig:
    """Online GRPO of one LLM resource (trl's ``GRPOTrainer`` with trainer-side generation).

    A field with an :func:`~.config_fields.option` is an option of ``agentstream train grpo-online``.
    """

    resource_name: str = field(
        metadata=option("The LLM resource trained versions are published to.", flag="--resource")
    )
    #: a callable or "module:function" (see the module doc)
    reward: Reward = field(metadata=option("Reward function, MODULE:FUNCTION (see trainers/grpo.py)."))
    #: version or label of the resource to start from, or "base" (then ``base_model``)
    init_from: str = field(default="production", metadata=option("Version or label to start from, or base."))
    #: a Hugging Face model folder; required with ``init_from="base"``, the fallback base of adapters
    base_model: str | None = field(
        default=None, metadata=option("Model folder for --init-from base (or an adapter's base).")
    )
    label: str = field(default=CANDIDATE, metadata=API_ONLY)
    #: ``lineage["trainer"]``; default ``grpo-online-<resource_name>``
    trainer_name: str | None = field(default=None, metadata=API_ONLY)

    # -- prompts
    prompts: Literal["tasks", "triplets"] = field(
        default="tasks", metadata=option("tasks (the tasks topic) or triplets (recent prompts).")
    )
    #: task input -> prompt text or chat messages (a callable or "module:function")
    prompt: Callable[[Any], Any] | str | None = field(
        default=None, metadata=option("MODULE:FUNCTION building a prompt from a task input (tasks only).")
    )
    task_type: str | None = field(default=None, metadata=option("Only tasks of this type."))
    modes: tuple[str, ...] = field(
        default=("train",),
        metadata=option("Rollout modes (repeat); default train.", flag="--mode"),
    )
    max_prompts: int = field(default=256, metadata=option("Newest prompts used.", min=1))
    #: "auto" (chat when the tokenizer has a template and the prompt is messages), "messages" or "text"
    format: str = field(default="auto", metadata=API_ONLY)

    # -- generation
    num_generations: int = field(default=4, metadata=option("Completions per prompt.", min=2))
    max_completion_length: int = field(default=64, metadata=option(min=1))
    temperature: float = field(default=1.0, metadata=option(min=0.0))

    # -- optimisation
    max_steps: int = field(default=100, metadata=option(min=1))
    learning_rate: float = field(default=1e-5, metadata=option(flag="--lr"))
    #: KL coefficient against the start policy (0: no reference model, trl's default)
    beta: float = field(default=0.0, metadata=option("KL coefficient (0: no reference model)."))
    #: prompts per step = per_device_train_batch_size / num_generations
    per_device_train_batch_size: int = field(
        default=4, metadata=option("Completions per step.", flag="--batch-size", min=1)
    )
    gradient_accumulation_steps: int = field(default=1, metadata=API_ONLY)
    lora_r: int = field(default=0, metadata=option("LoRA rank; 0 trains every weight.", min=0))
    lora_alpha: int | None = field(default=None, metadata=API_ONLY)
    lora_target_modules: list[str] | None = field(default=None, metadata=API_ONLY)

    # -- where generation runs
    #: ``None``: vLLM when it is installed and CUDA is present
    use_vllm: bool | None = field(
        default=None,
        metadata=option("Generate with vLLM (default: when installed and on GPU).", flag="--vllm/--no-vllm"),
    )
    vllm_mode: str = field(default="colocate", metadata=API_ONLY)
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata=API_ONLY)

    # -- the result
    #: checkpoints go to ``<output_dir>/<resource_name>/v<N>``; default ``settings.trainer.output_dir``
    output_dir: Path | None = field(default=None, metadata=option("Default <data_dir>/checkpoints."))
    seed: int = field(default=0, metadata=option())
    #: any other ``GRPOConfig`` field (e.g. ``{"loss_type": "dr_grpo"}``)
    trl_args: dict[str, Any] = field(default_factory=dict, metadata=API_ONLY)

    def __post_init__(self) -> None:
        check_ranges(self)
        check_choice(self, "prompts", ("tasks", "triplets"))
        check_choice(self, "format", FORMATS)
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"{named(self, 'per_device_train_batch_size')} must be a multiple of "
                f"{named(self, 'num_generations')}, since each step scores whole groups: "
                f"{self.per_device_train_batch_size} is not a multiple of {self.num_generations}"
            )
        if self.init_from == "base" and not self.base_model:
            raise ValueError(
                f"{named(self, 'init_from')} base needs a {named(self, 'base_model')} to start from"
            )


@dataclass
class OnlineGRPOResult:
    """What one run produced."""

    version: ResourceVersion | None
    #: trl's log entries, one per step (``loss``, ``reward``, ``reward_std``, ...)
    history: list[dict[str, Any]]
    prompts: int
    steps: int
    generation: str
    checkpoint: Path | None = None

    @property
    def rewards(self) -> list[float]:
        return [float(entry["reward"]) for entry in self.history if "reward" in entry]

    @property
    def losses(self) -> list[float]:
        return [float(entry["loss"]) for entry in self.history if "loss" in entry]


def vllm_available() -> bool:
    """Whether vLLM generation can run here: the gpu extra installed and a CUDA device present."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


# ---- the trainer ---------------------------------------------------------------------------------------
class OnlineGRPOTrainer:
    """Trains a resource's policy with online GRPO and publishes the result (see the module doc).

    Args:
        config: what to train and how.
        settings: Kafka, ClickHouse and ``settings.trainer`` (the checkpoint folder).
        store: a resource store; default one of its own.
        prompts: the prompt rows to use instead of ``config.prompts`` (``{"prompt": ..., **columns}``).
        on_log: called with every log entry trl emits (one per step: loss, reward, ...).
    """

    def __init__(
        self,
        config: OnlineGRPOConfig,
        settings: Settings,
        *,
        store: ResourceStore | None = None,
        prompts: Sequence[dict[str, Any]] | None = None,
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.settings = settings.resolved()
        self.name = config.trainer_name or f"grpo-online-{config.resource_name}"
        self._store = store
        self._owns_store = store is None
        self._prompts = list(prompts) if prompts is not None else None
        self.on_log = on_log
        self.reward = reward_function(config.reward)  # fails here, before any loading, on a bad spec

    @property
    def store(self) -> ResourceStore:
        if self._store is None:
            from agentstream.resources.store import ResourceStore

            self._store = ResourceStore(self.settings, who=f"trainer:{self.name}").open()
        return self._store

    def close(self) -> None:
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None

    def use_vllm(self) -> bool:
        wanted = self.config.use_vllm
        available = vllm_available()
        if wanted and not available:
            raise RuntimeError(
                "use_vllm=True needs the gpu extra (pip install 'agentstream[gpu]') and a CUDA device"
            )
        return available if wanted is None else wanted

    def prompt_rows(self, tokenizer: Any) -> list[dict[str, Any]]:
        """The prompt dataset's rows, in the model's format."""
        return self._formatted(self._source_rows(), tokenizer)

    def _source_rows(self) -> list[dict[str, Any]]:
        c = self.config
        if self._prompts is not None:
            rows = self._prompts
        elif c.prompts == "tasks":
            rows = prompts_from_tasks(
                self.settings, prompt=c.prompt, task_type=c.task_type, modes=c.modes, limit=c.max_prompts
            )
        elif c.prompts == "triplets":
            from agentstream.clickhouse.connect import connect

            rows = prompts_from_triplets(
                connect(self.settings),
                resource_name=c.resource_name,
                task_type=c.task_type,
                modes=c.modes,
                limit=c.max_prompts,
            )
        else:
            raise ValueError(f"unknown prompt source {c.prompts!r}: use tasks or triplets")
        if not rows:
            raise ValueError(
                f"no prompts for online GRPO of {c.resource_name} (source {c.prompts!r}, "
                f"modes {c.modes}, task type {c.task_type!r})"
            )
        return rows

    def _formatted(self, rows: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
        c = self.config
        fmt = resolve_format(c.format, tokenizer)
        if fmt == "messages" and c.format == "auto" and all(isinstance(r["prompt"], str) for r in rows):
            fmt = "text"  # completion-style prompts stay completions for a model that also chats
        return [{**row, "prompt": as_format(row["prompt"], fmt)} for row in rows]

    def train(self, stop: threading.Event | None = None) -> OnlineGRPOResult:
        """Load the start policy, run GRPO for ``max_steps``, save and publish (labelled ``label``)."""
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        c = self.config
        source_rows = self._source_rows()  # before loading anything: no prompts, no training
        init = None if c.init_from == "base" else self.store.get(c.resource_name, c.init_from)
        continues_adapter = init is not None and init.config.get("adapter") == "true"
        if init is not None and continues_adapter:
            base_model = init.config.get("base_model") or c.base_model or ""
        elif init is not None:  # a full checkpoint: a new adapter sits on it
            base_model = (init.uri or "").removeprefix("file://")
        else:
            base_model = c.base_model or ""
        model, tokenizer, peft_config = load_policy(
            base_model,
            init=init,
            lora_r=c.lora_r,
            lora_alpha=c.lora_alpha,
            lora_target_modules=c.lora_target_modules,
        )
        rows = self._formatted(source_rows, tokenizer)
        use_vllm = self.use_vllm()
        generation = f"vllm-{c.vllm_mode}" if use_vllm else "transformers"
        root = Path(c.output_dir) if c.output_dir is not None else output_root(self.settings)
        scratch = root / c.resource_name / f".trl-{self.name}-{int(time.time())}"
        args = GRPOConfig(
            **{
                "output_dir": str(scratch),
                "max_steps": c.max_steps,
                "learning_rate": c.learning_rate,
                "beta": c.beta,
                "num_generations": c.num_generations,
                "max_completion_length": c.max_completion_length,
                "temperature": c.temperature,
                "per_device_train_batch_size": c.per_device_train_batch_size,
                "gradient_accumulation_steps": c.gradient_accumulation_steps,
                "use_vllm": use_vllm,
                **(
                    {"vllm_mode": c.vllm_mode, "vllm_gpu_memory_utilization": c.vllm_gpu_memory_utilization}
                    if use_vllm
                    else {}
                ),
                "seed": c.seed,
                "logging_steps": 1,
                "save_strategy": "no",
                "report_to": "none",
                "disable_tqdm": True,
                "dataloader_num_workers": 0,
                **device_args(),
                **c.trl_args,
            }
        )
        history: list[dict[str, Any]] = []
        on_log = self.on_log

        class Observe(TrainerCallback):
            def on_log(
                self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
            ) -> None:
                if logs:
                    history.append(dict(logs, step=state.global_step))
                    if on_log is not None:
                        on_log(history[-1])

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if stop is not None and stop.is_set():
                    control.should_training_stop = True

        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[self.reward],
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[Observe()],
        )
        quiet(trainer)
        started = time.monotonic()
        trainer.train()
        seconds = time.monotonic() - started
        shutil.rmtree(scratch, ignore_errors=True)
        steps = trainer.state.global_step
        if stop is not None and stop.is_set():
            return OnlineGRPOResult(None, history, len(rows), steps, generation)
        adapter = peft_config is not None or continues_adapter
        path = reserve_checkpoint_dir(root, c.resource_name, self.store)
        save_checkpoint(trainer.model, tokenizer, path)
        version = publish_checkpoint(
            self.store,
            c.resource_name,
            path,
            base_model=base_model,
            adapter=adapter,
            lineage=self._lineage(init, rows, history, steps, seconds, generation),
            config={"algorithm": "grpo-online"},
            parent_version=init.version if init is not None else None,
            label=c.label,
        )
        return OnlineGRPOResult(version, history, len(rows), steps, generation, path)

    def _lineage(
        self,
        init: ResourceVersion | None,
        rows: list[dict[str, Any]],
        history: list[dict[str, Any]],
        steps: int,
        seconds: float,
        generation: str,
    ) -> dict[str, str]:
        c = self.config
        rewards = [float(e["reward"]) for e in history if "reward" in e]
        losses = [float(e["loss"]) for e in history if "loss" in e]
        lineage = {
            "trainer": self.name,
            "trainer.algorithm": "grpo-online",
            "init_from": f"{init.resource_name}:v{init.version}" if init is not None else str(c.base_model),
            "prompts.source": "given" if self._prompts is not None else c.prompts,
            "prompts.count": str(len(rows)),
            "prompts.filter": json.dumps({"task_type": c.task_type, "modes": list(c.modes)}),
            "reward": c.reward if isinstance(c.reward, str) else _qualified(c.reward),
            "generation": generation,
            "grpo.num_generations": str(c.num_generations),
            "grpo.beta": str(c.beta),
            "metrics.steps": str(steps),
            "metrics.train_seconds": f"{seconds:.3f}",
        }
        if rewards:
            lineage.update(
                {
                    "metrics.reward_first": f"{rewards[0]:.6g}",
                    "metrics.reward_last": f"{rewards[-1]:.6g}",
                    "metrics.reward_mean": f"{sum(rewards) / len(rewards):.6g}",
                }
            )
        if losses:
            lineage.update(
                {
                    "metrics.train_loss_first": f"{losses[0]:.6g}",
                    "metrics.train_loss_last": f"{losses[-1]:.6g}",
                }
            )
        return lineage


def _qualified(function: Callable[..., Any]) -> str:
    return f"{getattr(function, '__module__', '?')}:{getattr(function, '__qualname__', repr(function))}"
