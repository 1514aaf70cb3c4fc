"""RL from logged rollouts: learn from rewarded attempts without generating anything new.

Three algorithms, one Config and one Trainer each (like trl), all fed by the triplet stream:

* :class:`KTOFromLogs` - trl's ``KTOTrainer`` on unpaired examples: an attempt is desirable when its
  reward reaches ``threshold`` (thumbs up/down, pass/fail graders).
* :class:`DPOFromLogs` - trl's ``DPOTrainer`` on the best against the worst attempt of each task.
* :class:`GRPOFromLogs` - trl's ``GRPOTrainer`` with a ``rollout_func`` that *replays* logged attempts
  of the same task (``num_generations`` of them) with their logged rewards, so advantages are
  group-relative, as in GRPO, but nothing is generated.

How attempts are grouped into tasks: see :mod:`.data` (a triplet has no task key; the prompt text is).

Logged tokens: when a triplet carries the token ids the server returned (``prompt_token_ids``,
``response_token_ids``) and they decode to the logged text with this model's tokenizer, GRPO
replays those exact ids instead of re-tokenizing. Logged logprobs (``response_logprobs``) are passed
to trl as the sampling logprobs; trl 1.16 only uses them for its vLLM importance-sampling
correction, so on the plain (no vLLM) path the update is on-policy REINFORCE-style with no
off-policy correction for attempts sampled from an older model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config_fields import API_ONLY, option
from .data import (
    Attempt,
    dpo_pairs,
    grpo_groups,
    kto_rows,
    prompt_messages,
    prompt_text,
    resolve_format,
    response_text,
    to_dataset,
)
from .weights import WeightsConfig, WeightTrainer

__all__ = [
    "DPOFromLogs",
    "DPOFromLogsConfig",
    "GRPOFromLogs",
    "GRPOFromLogsConfig",
    "KTOFromLogs",
    "KTOFromLogsConfig",
]


# ---- KTO ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class KTOFromLogsConfig(WeightsConfig):
    """KTO on thresholded rewards."""

    #: reward at which an attempt counts as desirable; default ``settings.trainer.min_reward``
    threshold: float | None = field(
        default=None, metadata=option("Reward of a desirable attempt (default trainer.min_reward).")
    )
    beta: float = field(default=0.1, metadata=option())
    desirable_weight: float = field(default=1.0, metadata=API_ONLY)
    undesirable_weight: float = field(default=1.0, metadata=API_ONLY)


class KTOFromLogs(WeightTrainer):
    """trl's ``KTOTrainer`` on each window: label = reward >= threshold."""

    algorithm: ClassVar[str] = "kto"
    config: KTOFromLogsConfig

    def rows(self, triplets: list[Any], tokenizer: Any) -> list[dict[str, Any]]:
        threshold = (
            self.config.threshold if self.config.threshold is not None else self.settings.trainer.min_reward
        )
        rows = kto_rows(triplets, resolve_format(self.config.format, tokenizer), threshold)
        return rows if len(rows) >= 2 else []

    def trl_trainer(
        self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], peft_config: Any, args: dict[str, Any]
    ) -> Any:
        from trl import KTOConfig, KTOTrainer

        c = self.config
        config = KTOConfig(
            **{
                "max_length": c.max_length,
                "beta": c.beta,
                "desirable_weight": c.desirable_weight,
                "undesirable_weight": c.undesirable_weight,
                **args,
            }
        )
        return KTOTrainer(
            model=model,
            args=config,
            train_dataset=to_dataset(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
        )

    def metrics(self, trainer: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
        return {
            "metrics.desirable": str(sum(r["label"] for r in rows)),
            "metrics.undesirable": str(sum(not r["label"] for r in rows)),
        }


# ---- DPO ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DPOFromLogsConfig(WeightsConfig):
    """DPO on best/worst pairs of attempts at the same task."""

    beta: float = field(default=0.1, metadata=option())
    #: a pair needs its rewards to differ by more than this
    min_margin: float = field(default=0.0, metadata=option("Reward gap a best/worst pair needs."))
    loss_type: str = field(default="sigmoid", metadata=API_ONLY)


class DPOFromLogs(WeightTrainer):
    """trl's ``DPOTrainer`` on each window's mined pairs (the reference model is the starting policy)."""

    algorithm: ClassVar[str] = "dpo"
    config: DPOFromLogsConfig

    def rows(self, triplets: list[Any], tokenizer: Any) -> list[dict[str, Any]]:
        return dpo_pairs(triplets, resolve_format(self.config.format, tokenizer), self.config.min_margin)

    def trl_trainer(
        self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], peft_config: Any, args: dict[str, Any]
    ) -> Any:
        from trl import DPOConfig, DPOTrainer

        c = self.config
        config = DPOConfig(**{"max_length": c.max_length, "beta": c.beta, "loss_type": c.loss_type, **args})
        return DPOTrainer(
            model=model,
            args=config,
            train_dataset=to_dataset(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
        )

    def metrics(self, trainer: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
        return {"metrics.pairs": str(len(rows))}


# ---- GRPO from logs ----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class GRPOFromLogsConfig(WeightsConfig):
    """GRPO over groups of logged attempts at the same task."""

    #: attempts per group (trl's ``num_generations``); tasks with more are split, fewer are repeated
    num_generations: int = field(default=4, metadata=option("Attempts per group.", min=2))
    #: distinct attempts a task needs to form a group
    min_attempts: int = field(default=2, metadata=API_ONLY)
    #: KL coefficient against the starting policy (0: no reference model)
    beta: float = field(default=0.0, metadata=option("KL coefficient (0: no reference model)."))
    max_completion_length: int = field(default=256, metadata=API_ONLY)
    #: replay the server's token ids when they match the logged text under this tokenizer
    use_logged_tokens: bool = field(default=True, metadata=API_ONLY)


class GRPOFromLogs(WeightTrainer):
    """trl's ``GRPOTrainer`` whose rollouts are logged attempts and whose rewards are logged rewards."""

    algorithm: ClassVar[str] = "grpo"
    config: GRPOFromLogsConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._groups: dict[str, list[Attempt]] = {}
        self.replayed = {"attempts": 0, "logged_tokens": 0, "logged_logprobs": 0}

    def rows(self, triplets: list[Any], tokenizer: Any) -> list[dict[str, Any]]:
        self._groups = grpo_groups(triplets, self.config.num_generations, self.config.min_attempts)
        # the prompt of a row is its group's id: the rollout function looks the attempts up by it
        return [{"prompt": group_id} for group_id in self._groups]

    def trl_trainer(
        self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], peft_config: Any, args: dict[str, Any]
    ) -> Any:
        import os

        from trl import GRPOConfig, GRPOTrainer

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in trl
        c = self.config
        fmt = resolve_format(c.format, tokenizer)
        groups = self._groups
        g = c.num_generations
        # a batch holds whole groups, and no more groups than the window has
        batch = max(g, min(args["per_device_train_batch_size"], g * len(rows)) // g * g)
        args = {**args, "per_device_train_batch_size": batch}
        config = GRPOConfig(
            **{
                "num_generations": g,
                "beta": c.beta,
                "max_completion_length": c.max_completion_length,
                "use_vllm": False,
                **args,
            }
        )
        cursor: dict[str, int] = {}
        replayed = self.replayed

        def replay(prompts: list[str], trainer: Any) -> dict[str, Any]:
            out: dict[str, list[Any]] = {"prompt_ids": [], "completion_ids": [], "logged_reward": []}
            logprobs: list[list[float]] | None = []
            for group_id in prompts:
                index = cursor.get(group_id, 0)
                cursor[group_id] = (index + 1) % g
                attempt = groups[group_id][index]
                prompt_ids, completion_ids, attempt_logprobs = _replay_tokens(
                    attempt, tokenizer, fmt, c.use_logged_tokens, c.max_completion_length
                )
                out["prompt_ids"].append(prompt_ids)
                out["completion_ids"].append(completion_ids)
                out["logged_reward"].append(attempt.reward)
                replayed["attempts"] += 1
                replayed["logged_tokens"] += attempt_logprobs is not False
                if isinstance(attempt_logprobs, list) and attempt_logprobs and logprobs is not None:
                    logprobs.append(attempt_logprobs)
                    replayed["logged_logprobs"] += 1
                else:
                    logprobs = None  # trl takes sampling logprobs for the whole batch or not at all
            return {**out, "logprobs": logprobs}

        def logged_reward(
            prompts: list[str], completions: list[Any], logged_reward: list[float], **_: Any
        ) -> list[float | None]:
            return list(logged_reward)

        return GRPOTrainer(
            model=model,
            args=config,
            train_dataset=to_dataset(rows),
            processing_class=tokenizer,
            reward_funcs=[logged_reward],
            rollout_func=replay,
            peft_config=peft_config,
        )

    def metrics(self, trainer: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
        rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
        metrics = {
            "metrics.groups": str(len(rows)),
            "metrics.replayed": str(self.replayed["attempts"]),
            "metrics.replayed_logged_tokens": str(self.replayed["logged_tokens"]),
            "metrics.replayed_logged_logprobs": str(self.replayed["logged_logprobs"]),
        }
        if rewards:
            metrics["metrics.reward_mean"] = f"{sum(rewards) / len(rewards):.6g}"
        return metrics


def _replay_tokens(
    attempt: Attempt, tokenizer: Any, fmt: str, use_logged: bool, max_completion: int
) -> tuple[list[int], list[int], list[float] | None | bool]:
    """Prompt ids, completion ids and logged logprobs of an attempt.

    The third value is ``False`` when the ids were re-tokenized from text (no logprobs apply then),
    else the logged logprobs when they cover the completion, else ``None``.
    """
    t = attempt.triplet
    if use_logged and t.prompt_token_ids and t.response_token_ids and _decodes_to(tokenizer, t):
        completion = list(t.response_token_ids)[:max_completion]
        logged = list(getattr(t, "response_logprobs", None) or [])
        logprobs = logged[: len(completion)] if len(logged) >= len(completion) else None
        return list(t.prompt_token_ids), completion, logprobs
    if fmt == "messages":
        prompt_ids = tokenizer.apply_chat_template(
            prompt_messages(t), tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
    else:
        prompt_ids = tokenizer(prompt_text(t))["input_ids"]
    completion = tokenizer(response_text(t), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = [*completion, tokenizer.eos_token_id]
    return list(prompt_ids), completion[:max_completion], False


def _decodes_to(tokenizer: Any, triplet: Any) -> bool:
    """Logged ids belong to this tokenizer when they are in its vocabulary and decode to the logged text."""
    size = len(tokenizer)
    if any(not 0 <= i < size for i in (*triplet.prompt_token_ids, *triplet.response_token_ids)):
        return False
    decoded = tokenizer.decode(triplet.response_token_ids, skip_special_tokens=True)
    return bool(decoded.strip() == response_text(triplet).strip())
