"""SFT in the loop: after APO, LoRA-tune the bundled base model on the loop's good calls, live.

In the demo (``examples/improvement_loop.py``) the stage *distils the context*:

    model = run_sft_stage(settings, store, label=None,             # support-model v1, unlabelled
                          prompt_template=DISTILLED_TEMPLATE, response_prefix=DISTILLED_PREFIX)
    prompt = publish_bound_prompt(store, model, production)        # support-prompt vN: bare ticket
    server = ModelServer(settings, [MODEL_RESOURCE], store=store).start()
    agent.serve(MODEL_RESOURCE, server.base_url, api_key=server.token)
    ...score vN on validation like APO's candidates; the round's winner is labelled candidate...

The stage reads the triplets topic in a consumer group of its own, keeps the calls of the
``support-prompt`` resource whose reward dimensions add up to ``min_reward`` (routed right *and*
resolved, 1.0 + 1.0; human handoffs count like any other call) in the ``train`` and ``prod``
modes, and trains a LoRA adapter on them with completion-only loss through
:class:`~agentstream.trainers.sft.StreamSFTTrainer`. With ``prompt_template`` each call is learned
as the answer to that template (the ticket alone, primed up to the queue) rendered with the call's
own ticket, whatever prompt it was answered under: the model learns to answer from the ticket what
it (or a human) answered with demonstrations in front of it, and its requests read a sixth of the
tokens (``benchmarks/sft_budget.py``: 98% on validation after 2 epochs over the 200 training
tickets, against 92% for retrieving 4 demonstrations). The adapter is published as the next
version of the LLM resource with its lineage (base model, triplet window, rows, epochs, loss) and
the prompt it expects.

The prompt and the model change together, so the A/B is on the prompt: :func:`publish_bound_prompt`
publishes a version of ``support-prompt`` whose ``config["model"]`` names the model version, and
the agent sends a bound version's requests to the model server (which follows the resource
topics and loads the adapter on first use), every other version's to llama.cpp. Labelling it
``candidate`` splits traffic 50/50 as for any prompt; the promotion controller promotes it or
rolls it back, and moving the ``production`` label back is the rollback of prompt and model at once.
Nothing restarts. Without ``prompt_template`` (``agentstream train sft``) the calls are learned
under the prompts they were answered under and the version is labelled ``candidate`` itself, for
agents that request ``model_for(rollout)``: the LLM resource's own A/B.

Why our model server and not llama.cpp: measured on the 2-core machine (contended), both answered
a 540-token few-shot ticket prompt in about 13.5-14 s with the same trained adapter and the same
answers (9/10); llama.cpp needs the adapter converted (``convert_lora_to_gguf.py``, which only the
llama-cpp-python sdist carries: 18 s) and one more server process per version (3.5 s to start).
The model server serves the adapter from the next request that names it (merged into the base on
first use: 23 s contended), and answers the bare-ticket prompt in about 1 s per ticket.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from agentstream.schemas import CANDIDATE, PRODUCTION, ResourceKind, ResourceVersion
from agentstream.serving.checkpoints import served_name
from agentstream.settings import Settings
from agentstream.trainers.base_model import gemma_base_model
from agentstream.trainers.checkpoint import publish_checkpoint, published_versions
from agentstream.trainers.sft import StreamSFTConfig, StreamSFTTrainer

from .support_agent import DEMO_MIN_REWARD, PROMPT_MODEL, PROMPT_RESOURCE

if TYPE_CHECKING:
    from agentstream.producers.tracer import Rollout
    from agentstream.resources.store import ResourceStore

logger = logging.getLogger(__name__)

#: the LLM resource whose versions are the agent's model: v1 the base model, then SFT adapters
MODEL_RESOURCE = "support-model"

#: the prompt the demo distils into the model: the ticket alone, primed up to the queue (a sixth of
#: the tokens of four retrieved demonstrations; benchmarks/sft_budget.py measures what it buys)
DISTILLED_TEMPLATE = "Ticket: {{ticket}}\nAction:"
DISTILLED_PREFIX = ' create_ticket({"queue": "'

__all__ = [
    "DISTILLED_PREFIX",
    "DISTILLED_TEMPLATE",
    "MODEL_RESOURCE",
    "SFTStageError",
    "model_for",
    "publish_base_model",
    "publish_bound_prompt",
    "run_sft_stage",
]


class SFTStageError(RuntimeError):
    """The stage published nothing: no good calls to learn from, or training was interrupted."""


def model_for(rollout: Rollout, model_resource: str = MODEL_RESOURCE) -> str:
    """The model name a rollout requests from the model server: the version its runner pinned."""
    return f"{model_resource}:v{rollout.resource(model_resource).version}"


def publish_base_model(
    settings: Settings,
    store: ResourceStore,
    *,
    base_model: Path | None = None,
    model_resource: str = MODEL_RESOURCE,
) -> ResourceVersion:
    """The LLM resource's first version: the base model (default the bundled Gemma), ``production``.

    Idempotent: when the resource has versions already, its production version is returned.
    """
    existing = published_versions(store, model_resource)
    if existing:
        return store.find(model_resource, PRODUCTION) or existing[-1]
    base = base_model or gemma_base_model(settings)
    return publish_checkpoint(
        store,
        model_resource,
        base,
        base_model=str(base),
        adapter=False,
        lineage={"trainer": "base", "source": base.name},
        label=PRODUCTION,
        kind=ResourceKind.LLM,
        reason="the base model",
    )


def run_sft_stage(
    settings: Settings,
    store: ResourceStore,
    *,
    base_model: Path | None = None,
    model_resource: str = MODEL_RESOURCE,
    prompt_resource: str = PROMPT_RESOURCE,
    min_reward: float = DEMO_MIN_REWARD,
    reward_of: str = "sum",
    lora_r: int = 8,
    epochs: float = 1.0,
    max_steps: int = -1,
    learning_rate: float = 1e-3,
    batch_size: int = 4,
    max_examples: int = 160,
    max_length: int = 768,
    settle_seconds: float = 5.0,
    idle_timeout: float = 60.0,
    label: str | None = CANDIDATE,
    prompt_template: str | None = None,
    response_prefix: str = "",
    seed: int = 0,
) -> ResourceVersion:
    """Train a LoRA adapter on the good calls of ``prompt_resource`` and publish it (see the module doc).

    Args:
        base_model: a Hugging Face folder; default the bundled Gemma (converted once).
        min_reward: a call is learned when its ``reward_of`` reward reaches this.
        max_examples: the window closes at this many good calls ...
        settle_seconds: ... or this long after the first one (the topic read so far is the window).
        idle_timeout: raise :class:`SFTStageError` when no good call arrives for this long.
        label: what the published version is labelled (``candidate``: the A/B split starts; ``None``:
            nothing, e.g. when a prompt version bound to it (:func:`publish_bound_prompt`) is A/B-tested).
        max_steps: optimizer steps instead of ``epochs`` (a time budget that does not grow with the calls).
        prompt_template, response_prefix: distil each call into this prompt (see
            :mod:`agentstream.trainers.sft`): the model learns to answer it without the demonstrations.

    Returns the published version; its ``uri`` is the adapter folder, ``config["base_model"]`` the base.
    """
    base = base_model or gemma_base_model(settings)
    config = StreamSFTConfig(
        resource_name=model_resource,
        base_model=str(base),
        trainer_name=f"sft-{model_resource}",
        from_resource=prompt_resource,
        modes=("train", "prod"),
        min_reward=min_reward,
        reward_of=reward_of,
        format="text",  # a base model without a chat template: the prompt text and its completion
        lora_r=lora_r,
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        max_length=max_length,
        window_count=max_examples,
        window_seconds=settle_seconds,
        label=label,
        prompt_template=prompt_template,
        response_prefix=response_prefix,
        seed=seed,
    )
    trainer = StreamSFTTrainer(config, settings, store=store)
    outcomes = trainer.run(once=True, idle_timeout=idle_timeout, show_progress=False)
    if not outcomes:
        raise SFTStageError(
            f"no call of {prompt_resource} with a {reward_of} reward of at least {min_reward} arrived "
            f"within {idle_timeout:.0f} s; nothing to learn from"
        )
    [outcome] = outcomes
    if outcome.version is None:
        raise SFTStageError(f"SFT of {model_resource} published nothing: {outcome.status}")
    version = outcome.version
    logger.info(
        "SFT: %s v%d from %s good calls (loss %s -> %s) in %s s",
        model_resource,
        version.version,
        version.lineage.get("metrics.examples"),
        version.lineage.get("metrics.train_loss_first"),
        version.lineage.get("metrics.train_loss_last"),
        version.lineage.get("metrics.train_seconds"),
    )
    return version


def publish_bound_prompt(
    store: ResourceStore,
    model: ResourceVersion,
    parent: ResourceVersion,
    *,
    prompt_resource: str = PROMPT_RESOURCE,
) -> ResourceVersion:
    """A version of ``prompt_resource`` that runs on ``model``: the template the model was distilled
    into, and ``config["model"]`` naming the model version (the agent sends its requests there).

    Published unlabelled, with the model's lineage; labelling it ``candidate`` starts its A/B against
    production like any prompt, and moving the label back is the rollback of prompt and model at once.
    """
    template = model.config.get("prompt_template")
    if template is None:
        raise SFTStageError(f"{model.resource_name} v{model.version} was not distilled into a prompt")
    name = served_name(model)  # what the model server answers as
    carried = (
        "base_model",
        "window.id",
        "metrics.examples",
        "metrics.train_seconds",
        "metrics.train_loss_last",
    )
    return store.publish(
        prompt_resource,
        template=template,
        config={"response_prefix": model.config.get("response_prefix", ""), PROMPT_MODEL: name},
        parent_version=parent.version,
        lineage={
            "trainer": "sft",
            "sft.model": name,
            **{f"sft.{key}": model.lineage[key] for key in carried if key in model.lineage},
        },
        reason=f"SFT: {name}, with the prompt it was trained on",
        force_new=True,
    )
