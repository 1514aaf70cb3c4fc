"""The command line without a broker: every command answers --help, the train commands' options are
their configs' fields, an option reaches its field, and a bad value is a clean usage error (exit 2)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from agentstream.cli import app
from agentstream.cli import train as train_cli
from agentstream.cli.config_options import config_options
from agentstream.trainers.grpo import OnlineGRPOConfig
from agentstream.trainers.rl import DPOFromLogsConfig, GRPOFromLogsConfig, KTOFromLogsConfig
from agentstream.trainers.sft import StreamSFTConfig

#: every command of `agentstream`, as its path of names
COMMANDS = {
    ("broker",),
    ("sink",),
    ("worker",),
    ("promoter",),
    ("migrate",),
    ("up",),
    ("otlp",),
    ("import",),
    ("status",),
    ("sql",),
    ("doctor",),
    ("forget",),
    ("rejoin",),
    ("demo",),
    ("runner",),
    ("apo",),
    ("curate",),
    ("report",),
    ("dashboard",),
    ("serve-model",),
    ("topics", "create"),
    ("topics", "list"),
    ("tasks", "enqueue"),
    ("resources", "publish"),
    ("resources", "list"),
    ("resources", "show"),
    ("resources", "diff"),
    ("resources", "label"),
    ("resources", "rollback"),
    ("export", "triplets"),
    ("dead-letters", "list"),
    ("dead-letters", "replay"),
    ("kafka", "fetch"),
    ("kafka", "run"),
    ("train", "sft"),
    ("train", "kto"),
    ("train", "dpo"),
    ("train", "grpo"),
    ("train", "grpo-online"),
}
#: train command -> its config, and whether it trains window after window (then --once, --max-windows)
TRAIN_CONFIGS = {
    "sft": (StreamSFTConfig, True),
    "kto": (KTOFromLogsConfig, True),
    "dpo": (DPOFromLogsConfig, True),
    "grpo": (GRPOFromLogsConfig, True),
    "grpo-online": (OnlineGRPOConfig, False),
}
BROKER = ["--bootstrap-servers", "127.0.0.1:9"]  # settings resolve without a running stack


def _commands(command: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    found = {}
    for name, sub in getattr(command, "commands", {}).items():
        if hasattr(sub, "commands"):
            found.update(_commands(sub, (*path, name)))
        else:
            found[(*path, name)] = sub
    return found


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_every_command_is_registered_and_answers_help() -> None:
    commands = _commands(typer.main.get_command(app))
    assert set(commands) == COMMANDS
    root = _invoke("--help")
    assert root.exit_code == 0, root.output
    for path, command in commands.items():
        result = _invoke(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert f"Usage: agentstream {' '.join(path)}" in result.output
        summary = (command.help or "").split("\n")[0].split()[:4]
        assert " ".join(summary) in " ".join(result.output.split()), (path, summary)


@pytest.mark.parametrize("command", sorted(TRAIN_CONFIGS))
def test_train_options_are_the_config_fields(command: str) -> None:
    config_cls, windows = TRAIN_CONFIGS[command]
    click_command = _commands(typer.main.get_command(app))[("train", command)]
    options = {param.name: param for param in click_command.params if param.name != "help"}
    cli_fields = {f.name: f for f in dataclasses.fields(config_cls) if f.metadata.get("cli", True)}
    run_options = set(train_cli.RUN_OPTIONS) if windows else set()
    assert set(options) == set(cli_fields) | run_options
    for name, spec in cli_fields.items():
        option = options[name]
        flag = spec.metadata.get("flag", "--" + name.replace("_", "-"))
        assert "/".join(option.opts + option.secondary_opts) == flag, name
        assert option.help == spec.metadata.get("help"), name
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        assert option.required == required, name
        if not required and not option.multiple:
            assert option.default == spec.default, name


def test_a_train_command_without_options_builds_the_default_config(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    monkeypatch.setattr(
        train_cli, "_run_window_trainer", lambda cls, config, *run: built.append((config, run))
    )
    for command, (config_cls, _) in TRAIN_CONFIGS.items():
        if command == "grpo-online":
            continue
        result = _invoke("train", command, "--resource", "llm", "--base-model", "/m")
        assert result.exit_code == 0, result.output
        config, run = built.pop()
        assert config == config_cls(resource_name="llm", base_model="/m")
        assert run == (False, None)


def test_train_options_reach_their_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    monkeypatch.setattr(
        train_cli, "_run_window_trainer", lambda cls, config, *run: built.append((config, run))
    )
    result = _invoke(
        *("train", "sft", "--resource", "llm", "--base-model", "/m", "--min-reward", "0.5"),
        *("--name", "mine", "--window-count", "16", "--window-seconds", "2.5", "--task-type", "a"),
        *("--task-type", "b", "--mode", "val", "--from-resource", "prompt", "--init-from", "latest"),
        *("--format", "text", "--lora-r", "4", "--max-steps", "3", "--epochs", "2", "--lr", "0.01"),
        *("--batch-size", "2", "--max-length", "64", "--output-dir", "/out", "--seed", "5", "--once"),
        "--max-windows",
        "3",
    )
    assert result.exit_code == 0, result.output
    [(config, run)] = built
    assert config == StreamSFTConfig(
        resource_name="llm",
        base_model="/m",
        min_reward=0.5,
        trainer_name="mine",
        window_count=16,
        window_seconds=2.5,
        task_types=("a", "b"),
        modes=("val",),
        from_resource="prompt",
        init_from="latest",
        format="text",
        lora_r=4,
        max_steps=3,
        num_train_epochs=2.0,
        learning_rate=0.01,
        per_device_train_batch_size=2,
        max_length=64,
        output_dir=Path("/out"),
        seed=5,
    )
    assert run == (True, 3)


class _FakeOnlineTrainer:
    configs: list[OnlineGRPOConfig] = []

    def __init__(self, config: OnlineGRPOConfig, settings: Any, on_log: Any = None) -> None:
        self.configs.append(config)

    def train(self, stop: threading.Event | None = None) -> Any:
        return SimpleNamespace(version=None, steps=0)

    def close(self) -> None:
        pass


def test_grpo_online_options_reach_their_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_cli, "OnlineGRPOTrainer", _FakeOnlineTrainer)
    monkeypatch.setattr(train_cli, "stop_event", threading.Event)  # no signal handlers in the test process
    _FakeOnlineTrainer.configs.clear()
    result = _invoke(*BROKER, "train", "grpo-online", "--resource", "llm", "--reward", "mod:f")
    assert result.exit_code == 1 and "nothing published" in result.output, result.output
    assert _FakeOnlineTrainer.configs.pop() == OnlineGRPOConfig(resource_name="llm", reward="mod:f")
    result = _invoke(
        *BROKER,
        *("train", "grpo-online", "--resource", "llm", "--reward", "mod:f", "--init-from", "base"),
        *("--base-model", "/m", "--prompts", "triplets", "--task-type", "t", "--mode", "prod"),
        *("--max-prompts", "8", "--num-generations", "2", "--max-completion-length", "16"),
        *("--temperature", "0.5", "--max-steps", "7", "--lr", "0.001", "--beta", "0.04"),
        *("--batch-size", "6", "--lora-r", "8", "--no-vllm", "--seed", "3"),
    )
    assert result.exit_code == 1, result.output
    assert _FakeOnlineTrainer.configs.pop() == OnlineGRPOConfig(
        resource_name="llm",
        reward="mod:f",
        init_from="base",
        base_model="/m",
        prompts="triplets",
        task_type="t",
        modes=("prod",),
        max_prompts=8,
        num_generations=2,
        max_completion_length=16,
        temperature=0.5,
        max_steps=7,
        learning_rate=0.001,
        beta=0.04,
        per_device_train_batch_size=6,
        lora_r=8,
        use_vllm=False,
        seed=3,
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("sft", "--resource", "r", "--base-model", "/m", "--format", "xml"), "format (--format)"),
        (("grpo-online", "--resource", "r", "--reward", "m:f", "--prompts", "logs"), "prompts (--prompts)"),
        (("grpo-online", "--resource", "r", "--reward", "m:f", "--batch-size", "6"), "(--batch-size)"),
        (("grpo-online", "--resource", "r", "--reward", "m:f", "--init-from", "base"), "(--base-model)"),
    ],
)
def test_an_invalid_config_is_a_usage_error_naming_the_option(args: tuple[str, ...], named: str) -> None:
    result = _invoke("train", *args)
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output


def test_a_range_is_checked_by_the_option_too() -> None:
    result = _invoke("train", "dpo", "--resource", "r", "--base-model", "/m", "--window-count", "0")
    assert result.exit_code == 2 and "--window-count" in result.output


def test_config_options_needs_a_config_parameter() -> None:
    def no_config(once: bool = False) -> None:
        pass

    def clash(config: StreamSFTConfig, seed: int = 0) -> None:
        pass

    with pytest.raises(TypeError, match="config"):
        config_options(StreamSFTConfig)(no_config)
    with pytest.raises(TypeError, match="seed"):
        config_options(StreamSFTConfig)(clash)


def test_demo_refuses_a_bad_tickets_file_before_starting_anything(tmp_path: Path) -> None:
    bad = tmp_path / "tickets.jsonl"
    bad.write_text('{"text": "x", "queue": "it", "split": "train"}\n{"text": "y"}\n')
    result = _invoke("--data-dir", str(tmp_path / "data"), "demo", "--tickets", str(bad))
    assert result.exit_code == 2, result.output
    assert "tickets.jsonl:2: needs non-empty string fields 'text' and 'queue'" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "data" / "demo").exists()  # nothing was started
