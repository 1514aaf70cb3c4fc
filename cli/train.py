"""`agentstream train` (weight training from the triplet stream) and `agentstream apo` (prompt optimisation).

A train command's options are the fields of its trainer's Config (see cli/config_options.py): an
option is added, documented and checked in one place, the Config dataclass in agentstream/trainers/.
`apo` is registered on the root command by cli/app.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from agentstream.cli.config_options import config_options
from agentstream.cli.context import console, err_console, resolved_settings, stop_event
from agentstream.trainers.grpo import OnlineGRPOConfig, OnlineGRPOTrainer
from agentstream.trainers.rl import (
    DPOFromLogs,
    DPOFromLogsConfig,
    GRPOFromLogs,
    GRPOFromLogsConfig,
    KTOFromLogs,
    KTOFromLogsConfig,
)
from agentstream.trainers.sft import StreamSFTConfig, StreamSFTTrainer
from agentstream.trainers.weights import WeightsConfig, WeightTrainer

__all__ = ["RUN_OPTIONS", "apo", "train_app"]

train_app = typer.Typer(
    help="Train model weights from the triplet stream (SFT, KTO, DPO, GRPO from logs): a window of triplets at "
    "a time, each result published as a candidate version of an LLM resource.",
    no_args_is_help=True,
)

# How long a window trainer runs: arguments of its run(), not fields of its config.
OnceOpt = Annotated[bool, typer.Option("--once", help="Stop after one window.")]
MaxWindowsOpt = Annotated[
    int | None, typer.Option("--max-windows", min=1, help="Stop after this many windows.")
]
#: the options of a window trainer's command that are not fields of its config
RUN_OPTIONS = ("once", "max_windows")


@train_app.command("sft")
@config_options(StreamSFTConfig)
def train_sft(config: StreamSFTConfig, once: OnceOpt = False, max_windows: MaxWindowsOpt = None) -> None:
    """Supervised fine-tuning on high-reward triplets (completion- or assistant-only loss)."""
    _run_window_trainer(StreamSFTTrainer, config, once, max_windows)


@train_app.command("kto")
@config_options(KTOFromLogsConfig)
def train_kto(config: KTOFromLogsConfig, once: OnceOpt = False, max_windows: MaxWindowsOpt = None) -> None:
    """KTO on logged attempts labelled desirable by a reward threshold."""
    _run_window_trainer(KTOFromLogs, config, once, max_windows)


@train_app.command("dpo")
@config_options(DPOFromLogsConfig)
def train_dpo(config: DPOFromLogsConfig, once: OnceOpt = False, max_windows: MaxWindowsOpt = None) -> None:
    """DPO on the best against the worst logged attempt of each task."""
    _run_window_trainer(DPOFromLogs, config, once, max_windows)


@train_app.command("grpo")
@config_options(GRPOFromLogsConfig)
def train_grpo(config: GRPOFromLogsConfig, once: OnceOpt = False, max_windows: MaxWindowsOpt = None) -> None:
    """GRPO replaying logged attempts of the same task with their logged rewards (nothing is generated)."""
    _run_window_trainer(GRPOFromLogs, config, once, max_windows)


def _run_window_trainer(
    trainer_cls: type[WeightTrainer], config: WeightsConfig, once: bool, max_windows: int | None
) -> None:
    settings = resolved_settings()
    trainer = trainer_cls(config, settings)
    console.print(
        f"Trainer [bold]{trainer.name}[/] ({trainer.algorithm}): {config.base_model} -> {config.resource_name}, "
        f"windows of {config.window_count or settings.trainer.window_count} triplets — Ctrl-C to stop"
    )
    outcomes = trainer.run(once=once, max_windows=max_windows, stop=stop_event())
    published = sum(outcome.version is not None for outcome in outcomes)
    console.print(f"{len(outcomes)} window(s), {published} version(s) published.")


@train_app.command("grpo-online")
@config_options(OnlineGRPOConfig)
def train_grpo_online(config: OnlineGRPOConfig) -> None:
    """Online GRPO: generate completions for real task prompts with the policy, score them with your reward,
    train, and publish the result as a candidate version."""

    def on_log(entry: dict[str, Any]) -> None:
        if "reward" in entry:
            console.print(
                f"  step {entry['step']}: reward {entry['reward']:.3f}  loss {entry.get('loss', 0.0):.4f}"
            )

    try:
        trainer = OnlineGRPOTrainer(config, resolved_settings(), on_log=on_log)
    except ValueError as e:  # the reward function cannot be loaded
        err_console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from e
    try:
        result = trainer.train(stop=stop_event())
    finally:
        trainer.close()
    if result.version is None:
        console.print(f"Stopped after {result.steps} step(s); nothing published.")
        raise typer.Exit(1)
    console.print(
        f"Published {config.resource_name} [bold]v{result.version.version}[/] ({result.generation} generation, "
        f"{result.steps} steps on {result.prompts} prompts), labelled {config.label}."
    )


def apo(
    resource: Annotated[str, typer.Argument(help="The prompt-template resource to improve.")],
    val_file: Annotated[
        Path, typer.Option("--val", help="Validation task inputs, one JSON per line.", exists=True)
    ],
    optimizer_base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server of the optimizer model (textual gradients).")
    ] = None,
    optimizer_model: Annotated[str, typer.Option(help="Optimizer model name.")] = "gpt-4.1-mini",
    optimizer_api: Annotated[str, typer.Option(help="chat, or completions for a base model.")] = "chat",
    start_from: Annotated[str, typer.Option(help="Version or label to start from.")] = "production",
    rounds: Annotated[int, typer.Option(min=1)] = 2,
    beam_width: Annotated[int, typer.Option(min=1)] = 2,
    branch_factor: Annotated[int, typer.Option(min=1)] = 2,
    demos: Annotated[int, typer.Option(min=0, help="Demonstrations per bootstrapped candidate.")] = 8,
    demo_min_reward: Annotated[float, typer.Option(help="Triplet reward a demonstration needs.")] = 1.0,
    reward_of: Annotated[
        str, typer.Option(help="Ranking reward: sum (of the dimensions), primary, or a dimension name.")
    ] = "sum",
    task_type: Annotated[str, typer.Option(help="Task type of the validation rollouts.")] = "",
    retrieval_pool: Annotated[
        str | None,
        typer.Option(
            help="A demonstration pool (kept by `agentstream curate`): also propose prompts that retrieve "
            "their demonstrations from it per request."
        ),
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Improve a prompt resource from its triplets; candidates are scored by validation rollouts (runners and
    stream workers must be running); the winner is published and labelled candidate."""
    import os

    from agentstream.producers.client import AgentStream
    from agentstream.trainers.apo import APOConfig, APOTrainer
    from agentstream.trainers.evaluation import RolloutEvaluator

    items = [json.loads(line) for line in val_file.read_text().splitlines() if line.strip()]
    optimizer = None
    if optimizer_base_url is None:
        console.print(
            "Textual gradients: off, no --optimizer-base-url. They need a model that follows "
            "instructions to critique and rewrite the prompt (a base model such as the bundled Gemma "
            "cannot); candidates come from retrieval and demonstration bootstrapping only."
        )
    else:
        import openai

        optimizer = openai.OpenAI(
            base_url=optimizer_base_url, api_key=os.environ.get("OPENAI_API_KEY", "local")
        )
    config = APOConfig(
        resource_name=resource,
        start_from=start_from,
        rounds=rounds,
        beam_width=beam_width,
        branch_factor=branch_factor,
        demos=demos,
        demo_min_reward=demo_min_reward,
        reward_of=reward_of,
        optimizer_model=optimizer_model,
        optimizer_api=optimizer_api,
        retrieval_pool=retrieval_pool,
        seed=seed,
    )
    settings = resolved_settings()

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if kind == "progress":
            console.print(f"  v{fields['version']}: {fields['done']}/{fields['total']} rollouts", end="\r")
        else:
            console.print(f"{kind}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))

    with (
        AgentStream(settings) as client,
        RolloutEvaluator(settings, client, task_type=task_type) as evaluator,
    ):
        result = APOTrainer(
            config, settings, evaluator=evaluator, val_items=items, optimizer=optimizer, on_event=on_event
        ).train()
    if result.winner is None:
        console.print(f"No candidate beat v{result.baseline.version.version} ({result.baseline.score:.1%}).")
        raise typer.Exit(1)
    console.print(
        f"Published {resource} v{result.winner.version} (validation {result.winner_score:.1%} vs "
        f"{result.baseline.score:.1%}), labelled {config.label}."
    )


def curate(
    prompt_resource: Annotated[
        str, typer.Argument(help="The prompt-template resource whose good calls to keep.")
    ],
    pool: Annotated[str | None, typer.Option(help="The pool resource (default <prompt>.demos).")] = None,
    min_reward: Annotated[float, typer.Option(help="The least reward a call needs to join the pool.")] = 1.0,
    reward_of: Annotated[
        str, typer.Option(help="Which reward: sum (of the dimensions), primary, or a dimension name.")
    ] = "sum",
    max_size: Annotated[
        int, typer.Option(min=1, help="Demonstrations kept (best-rewarded, then newest).")
    ] = 400,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between pool versions at most.")] = 10.0,
) -> None:
    """Keep a demonstration pool from the triplets: every call rewarded at least --min-reward (human handoffs
    included) joins a new pool version, labelled production, which retrieving prompts read per request."""
    import signal
    import threading

    from agentstream.resources.store import ResourceStore
    from agentstream.trainers.demonstrations import CuratorConfig, DemonstrationCurator

    config = CuratorConfig(
        prompt_resource,
        pool or "",
        min_reward=min_reward,
        reward_of=reward_of,
        max_size=max_size,
        interval_s=interval,
    )
    settings = resolved_settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ResourceStore(settings, who="curator") as store:
        curator = DemonstrationCurator(config, settings, store).start()
        console.print(
            f"Curating {config.pool_resource} from the good calls of {prompt_resource} "
            f"({reward_of} reward >= {min_reward:g}); Ctrl-C to stop."
        )
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            curator.stop()
    console.print(f"Published {curator.published} pool version(s).")
