"""SFT from the triplet stream: learn the responses that earned a high reward.

    config = StreamSFTConfig(resource_name="support-llm", base_model="/models/gemma-270m", min_reward=1.0,
                             lora_r=16, window_count=512)
    StreamSFTTrainer(config, settings).run()        # window after window; each result labelled candidate

Rows follow the model: with a chat template, triplets become conversations and only the assistant
turn is learned (trl's ``assistant_only_loss`` when the template marks it with ``{% generation %}``,
otherwise conversational prompt/completion with ``completion_only_loss``); without one, they are the
prompt and completion texts, with ``completion_only_loss``.

With ``prompt_template`` set, the trainer *distils the context*: each good call is learned as the
answer to that template rendered with the call's own input values (recovered from the prompt it was
answered under, with the template of the ``from_resource`` version it is stamped with), instead of
as the answer to the prompt it was answered under. A model that answered well when shown retrieved
demonstrations (or a human who answered the seed prompt) thus teaches a model that answers the
bare ticket: a sixth of the prompt per request. The published version records the template and its
``response_prefix``, the prompt it expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import orjson

from agentstream.schemas import Triplet, render_template

from .apo import reward_of
from .config_fields import API_ONLY, option
from .data import resolve_format, sft_rows, to_dataset
from .demonstrations import examples_of
from .runtime import TripletFilter
from .weights import WeightsConfig, WeightTrainer

__all__ = ["RewardOfFilter", "StreamSFTConfig", "StreamSFTTrainer"]


@dataclass(kw_only=True)
class StreamSFTConfig(WeightsConfig):
    """SFT on reward-filtered triplets (fields of :class:`~.weights.WeightsConfig`, plus these)."""

    #: triplets rewarded below this are not learned; default ``settings.trainer.min_reward``
    min_reward: float | None = field(
        default=None, metadata=option("Learn triplets rewarded at least this (default trainer.min_reward).")
    )
    #: which reward ``min_reward`` applies to: "primary" (the triplet's scalar), "sum" (its reward
    #: dimensions added up: routed right *and* resolved is 1.0 + 1.0), or one dimension's name
    reward_of: str = field(
        default="primary", metadata=option("Reward compared with --min-reward: primary, sum or a dimension.")
    )
    #: context distillation (see the module doc): learn each good call as the answer to this
    #: template, rendered with the call's input values; needs ``from_resource`` and ``format="text"``
    prompt_template: str | None = field(
        default=None, metadata=option("Learn each call as the answer to this template (distillation).")
    )
    #: the start of the response the distilled prompt ends with (the model continues it); a call
    #: whose response does not start with it is not learned
    response_prefix: str = field(default="", metadata=option("The distilled prompt's response prefix."))
    packing: bool = field(default=False, metadata=API_ONLY)
    #: project only the learned positions through the LM head (see :func:`_learned_positions_trainer`)
    learned_logits_only: bool = field(default=True, metadata=API_ONLY)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_template is not None and (self.from_resource is None or self.format != "text"):
            raise ValueError(
                "prompt_template (context distillation) needs from_resource (whose templates give each "
                "call's input values) and format='text'"
            )


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
        if self.config.reward_of != "primary":
            return RewardOfFilter(
                resource_name=base.resource_name,
                task_types=base.task_types,
                modes=base.modes,
                min_reward=threshold,
                reward_of=self.config.reward_of,
            )
        return TripletFilter(
            resource_name=base.resource_name,
            task_types=base.task_types,
            modes=base.modes,
            min_reward=threshold,
        )

    def rows(self, triplets: list[Any], tokenizer: Any) -> list[dict[str, Any]]:
        if self.config.prompt_template is not None:
            self.row_format = "text, distilled into prompt_template (completion-only loss)"
            return self.distilled_rows(triplets)
        fmt = resolve_format(self.config.format, tokenizer)
        rows = sft_rows(triplets, fmt)
        self.row_format = "text (completion-only loss)" if fmt == "text" else "messages (assistant-only loss)"
        if fmt == "messages" and not _marks_generation(tokenizer):
            # no {% generation %} markers: the assistant turn is the completion of a conversational prompt
            rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
            self.row_format = "conversational prompt/completion (completion-only loss)"
        return rows

    def distilled_rows(self, triplets: list[Triplet]) -> list[dict[str, Any]]:
        """Each call's input values rendered into ``prompt_template``, its response after the prefix;
        one row per distinct pair (the same ticket answered alike twice is one example)."""
        c = self.config
        assert c.prompt_template is not None and c.from_resource is not None
        versions = self.store.state(c.from_resource).versions
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for example in examples_of(triplets, versions):
            if not example.response.startswith(c.response_prefix):
                continue
            try:
                prompt = render_template(c.prompt_template, example.values) + c.response_prefix
            except ValueError:  # the template needs a value this call's prompt did not have
                continue
            completion = example.response[len(c.response_prefix) :]
            if completion.strip():
                rows.setdefault((prompt, completion), {"prompt": prompt, "completion": completion})
        return list(rows.values())

    def version_config(self) -> dict[str, str]:
        c = self.config
        if c.prompt_template is None:
            return {}
        return {"prompt_template": c.prompt_template, "response_prefix": c.response_prefix}

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
                # trl turns it on by default; for a small model on CPU it only costs a second forward
                "gradient_checkpointing": False,
                **args,
            }
        )
        trainer_class = (
            _learned_positions_trainer(SFTTrainer) if self.config.learned_logits_only else SFTTrainer
        )
        return trainer_class(
            model=model,
            args=config,
            train_dataset=to_dataset(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
        )

    def metrics(self, trainer: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
        c = self.config
        return {
            "sft.rows": self.row_format,
            "sft.epochs": f"{trainer.state.epoch:.3g}" if c.max_steps > 0 else f"{c.num_train_epochs:g}",
            "sft.steps": str(trainer.state.global_step),
            "sft.lora_r": str(c.lora_r),
            "sft.learning_rate": f"{trainer.args.learning_rate:g}",
            "sft.reward_of": c.reward_of,
        }


@dataclass(frozen=True)
class RewardOfFilter(TripletFilter):
    """A :class:`TripletFilter` whose ``min_reward`` applies to ``reward_of`` (see :func:`.apo.reward_of`)."""

    reward_of: str = "primary"

    def accepts(self, triplet: Triplet) -> bool:
        if self.min_reward is None:
            return super().accepts(triplet)
        # everything but the threshold, then the threshold on the chosen reward
        if not replace(self, min_reward=None).accepts(triplet):
            return False
        value = reward_of(triplet, self.reward_of)
        return value is not None and value >= self.min_reward

    def describe(self) -> str:
        described: dict[str, Any] = orjson.loads(super().describe())
        described["reward_of"] = self.reward_of
        return orjson.dumps(described, option=orjson.OPT_SORT_KEYS).decode()


def _learned_positions_trainer(base: type) -> type:
    """``base`` (trl's ``SFTTrainer``) with a loss that projects only the learned positions to the vocabulary.

    trl's fused LM head scores only the labelled positions on Triton devices; on a CPU it scores
    every position. With Gemma's 262k-token vocabulary that is most of a step's work when the
    prompt is long and the completion a short tool call (a 540-token prompt: 3.7 s of LM head for
    2.2 s of transformer, per forward, on one core). This loss runs the backbone, then the LM head
    on the positions whose next token is learned, and averages their cross-entropy (over
    ``num_items_in_batch`` under gradient accumulation, as trl does). trl's token-accuracy and
    entropy metrics are not logged.
    """
    import torch
    from torch.nn import functional

    class LearnedPositionsSFTTrainer(base):
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            causal = model.get_base_model() if hasattr(model, "get_base_model") else model
            backbone = getattr(causal, causal.base_model_prefix)
            body = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
            hidden = backbone(**body, use_cache=False).last_hidden_state[:, :-1]
            target = inputs["labels"][:, 1:]
            learned = target != -100
            logits = causal.get_output_embeddings()(hidden[learned]).float()
            cap = getattr(causal.config, "final_logit_softcapping", None)
            if cap:
                logits = torch.tanh(logits / cap) * cap
            count = learned.sum() if num_items_in_batch is None else num_items_in_batch
            loss = functional.cross_entropy(logits, target[learned], reduction="sum")
            loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
            return (loss, {"loss": loss}) if return_outputs else loss

    return LearnedPositionsSFTTrainer


def _marks_generation(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "{% generation %}" in template or "{%- generation %}" in template
