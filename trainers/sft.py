"""SFT from the triplet stream: learn the responses that earned a high reward.

    config = StreamSFTConfig(resource_name="support-llm", base_model="/models/gemma-270m", min_reward=1.0,
                             lora_r=16, window_count=512)
    StreamSFTTrainer(config, settings).run()        # window after window; each result labelled candidate

Rows follow the model: with a chat template, triplets become conversations and only the assistant
turn is learned (trl's ``assistant_only_loss`` when the template marks it with ``{% generation %}``,
otherwise conversational prompt/completion with ``completion_only_loss``); without one, they are the
prompt and completion texts, with ``completion_only_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config_fields import API_ONLY, option
from .data import resolve_format, sft_rows, to_dataset
from .runtime import TripletFilter
from .weights import WeightsConfig, WeightTrainer

__all__ = ["StreamSFTConfig", "StreamSFTTrainer"]


@dataclass(kw_only=True)
class StreamSFTConfig(WeightsConfig):
    """SFT on reward-filtered triplets (fields of :class:`~.weights.WeightsConfig`, plus these)."""

    #: triplets rewarded below this are not learned; default ``settings.trainer.min_reward``
    min_reward: float | None = field(
        default=None, metadata=option("Learn triplets rewarded at least this (default trainer.min_reward).")
    )
    packing: bool = field(default=False, metadata=API_ONLY)


class StreamSFTTrainer(WeightTrainer):
    """trl's ``SFTTrainer`` on each window of high-reward triplets (LoRA when ``lora_r > 0``)."""

    algorithm: ClassVar[str] = "sft"
    config: StreamSFTConfig
    row_format: str = ""

    def make_filter(self) -> TripletFilter:
        base = super().make_filter()
        threshold = (
            self.config.min_reward if self.config.min_reward is not None else self.settings.trainer.min_reward
        )
        return TripletFilter(
            resource_name=base.resource_name,
            task_types=base.task_types,
            modes=base.modes,
            min_reward=threshold,
        )

    def rows(self, triplets: list[Any], tokenizer: Any) -> list[dict[str, Any]]:
        fmt = resolve_format(self.config.format, tokenizer)
        rows = sft_rows(triplets, fmt)
        self.row_format = "text (completion-only loss)" if fmt == "text" else "messages (assistant-only loss)"
        if fmt == "messages" and not _marks_generation(tokenizer):
            # no {% generation %} markers: the assistant turn is the completion of a conversational prompt
            rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
            self.row_format = "conversational prompt/completion (completion-only loss)"
        return rows

    def trl_trainer(
        self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], peft_config: Any, args: dict[str, Any]
    ) -> Any:
        from trl import SFTConfig, SFTTrainer

        conversation = "messages" in rows[0]
        config = SFTConfig(
            **{
                "max_length": self.config.max_length,
                "packing": self.config.packing,
                "assistant_only_loss": conversation,
                "completion_only_loss": None if conversation else True,
                **args,
            }
        )
        return SFTTrainer(
            model=model,
            args=config,
            train_dataset=to_dataset(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
        )

    def metrics(self, trainer: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
        return {"sft.rows": self.row_format}


def _marks_generation(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "{% generation %}" in template or "{%- generation %}" in template
