"""Trainer configs check themselves in ``__post_init__`` (the API and the command line alike), naming
the field and its option; and every field says whether, and how, it is a command-line option."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agentstream.trainers.config_fields import API_ONLY, check_ranges, flag_of, named, option
from agentstream.trainers.grpo import OnlineGRPOConfig
from agentstream.trainers.rl import DPOFromLogsConfig, GRPOFromLogsConfig, KTOFromLogsConfig
from agentstream.trainers.sft import StreamSFTConfig
from agentstream.trainers.weights import WeightsConfig

WINDOW_CONFIGS = [StreamSFTConfig, KTOFromLogsConfig, DPOFromLogsConfig, GRPOFromLogsConfig]
REQUIRED: dict[type, dict[str, Any]] = {
    **{cls: {"resource_name": "llm", "base_model": "/m"} for cls in WINDOW_CONFIGS},
    OnlineGRPOConfig: {"resource_name": "llm", "reward": "mod:f"},
}


@pytest.mark.parametrize("config_cls", [*WINDOW_CONFIGS, OnlineGRPOConfig])
def test_every_field_declares_its_option_or_none(config_cls: type) -> None:
    """A field added without metadata fails here: say how it appears on the command line, or API_ONLY."""
    for spec in dataclasses.fields(config_cls):
        assert spec.metadata.get("cli") is False or "help" in spec.metadata, spec.name
    config_cls(**REQUIRED[config_cls])  # the defaults pass the checks


@pytest.mark.parametrize(
    ("config_cls", "bad", "message"),
    [
        (StreamSFTConfig, {"window_count": 0}, "window_count (--window-count) must be at least 1, not 0"),
        (StreamSFTConfig, {"max_length": 4}, "max_length (--max-length) must be at least 8"),
        (KTOFromLogsConfig, {"lora_r": -1}, "lora_r (--lora-r) must be at least 0"),
        (DPOFromLogsConfig, {"per_device_train_batch_size": 0}, "per_device_train_batch_size (--batch-size)"),
        (DPOFromLogsConfig, {"format": "xml"}, "format (--format) must be auto, messages or text, not 'xml'"),
        (
            GRPOFromLogsConfig,
            {"num_generations": 1},
            "num_generations (--num-generations) must be at least 2",
        ),
        (OnlineGRPOConfig, {"temperature": -0.5}, "temperature (--temperature) must be at least 0.0"),
        (OnlineGRPOConfig, {"max_prompts": 0}, "max_prompts (--max-prompts)"),
        (OnlineGRPOConfig, {"prompts": "logs"}, "prompts (--prompts) must be tasks or triplets, not 'logs'"),
        (OnlineGRPOConfig, {"format": "html"}, "format (--format)"),
        (
            OnlineGRPOConfig,
            {"per_device_train_batch_size": 6, "num_generations": 4},
            "per_device_train_batch_size (--batch-size) must be a multiple of num_generations "
            "(--num-generations), since each step scores whole groups: 6 is not a multiple of 4",
        ),
        (
            OnlineGRPOConfig,
            {"init_from": "base"},
            "init_from (--init-from) base needs a base_model (--base-model)",
        ),
    ],
)
def test_post_init_rejects_a_bad_value_naming_its_option(
    config_cls: type, bad: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        config_cls(**REQUIRED[config_cls], **bad)
    assert message in str(raised.value)


def test_unset_values_and_good_combinations_pass() -> None:
    StreamSFTConfig(resource_name="llm", base_model="/m", window_count=None, max_length=None, lora_r=0)
    OnlineGRPOConfig(resource_name="llm", reward="m:f", init_from="base", base_model="/m")
    OnlineGRPOConfig(resource_name="llm", reward="m:f", per_device_train_batch_size=8, num_generations=2)
    GRPOFromLogsConfig(resource_name="llm", base_model="/m", num_generations=2)


def test_field_names_and_flags() -> None:
    assert flag_of(WeightsConfig, "learning_rate") == "--lr"
    assert flag_of(WeightsConfig, "window_count") == "--window-count"
    assert flag_of(OnlineGRPOConfig, "use_vllm") == "--vllm"
    assert (
        named(StreamSFTConfig, "per_device_train_batch_size") == "per_device_train_batch_size (--batch-size)"
    )

    @dataclasses.dataclass
    class Bounded:
        ratio: float = dataclasses.field(default=0.5, metadata=option("A ratio.", min=0.0, max=1.0))
        extra: dict[str, Any] = dataclasses.field(default_factory=dict, metadata=API_ONLY)

    check_ranges(Bounded())
    with pytest.raises(ValueError, match=r"ratio \(--ratio\) must be at most 1.0, not 1.5"):
        check_ranges(Bounded(ratio=1.5))
