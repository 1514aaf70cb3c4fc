"""The demo's round: which finalist goes to the A/B, and where a prompt bound to a model is answered."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from agentstream.examples.finalists import cheapest_within_noise
from agentstream.examples.sft_stage import DISTILLED_PREFIX, DISTILLED_TEMPLATE, MODEL_RESOURCE
from agentstream.examples.support_agent import PROMPT_MODEL, PROMPT_RESOURCE, SupportAgent
from agentstream.schemas import ResourceKind, ResourceVersion
from agentstream.schemas.ids import now_us


def prompt(number: int, config: dict[str, str]) -> ResourceVersion:
    return ResourceVersion(
        resource_name=PROMPT_RESOURCE,
        version=number,
        kind=ResourceKind.PROMPT_TEMPLATE,
        template=DISTILLED_TEMPLATE,
        variables=["ticket"],
        config=config,
        created_at=now_us(),
    )


def retrieval(number: int, k: int) -> ResourceVersion:
    return prompt(number, {"retrieval.pool": "support-prompt.demos", "retrieval.k": str(k)})


SFT = prompt(9, {"response_prefix": DISTILLED_PREFIX, PROMPT_MODEL: f"{MODEL_RESOURCE}:v1"})


def test_the_cheapest_finalist_within_the_noise_of_the_best_goes_to_the_ab() -> None:
    k4, k8 = retrieval(2, 4), retrieval(4, 8)
    # two tickets of 60 apart is noise: the prompt without demonstrations is the cheaper request
    assert cheapest_within_noise([(k8, 0.93), (k4, 0.92), (SFT, 0.90)], 0.03) == (SFT, 0.90)
    assert cheapest_within_noise([(k8, 0.93), (k4, 0.92)], 0.03) == (k4, 0.92)
    # a clear win is taken even when it costs more
    assert cheapest_within_noise([(k8, 0.97), (k4, 0.92), (SFT, 0.90)], 0.03) == (k8, 0.97)
    # equally cheap: the better score
    assert cheapest_within_noise([(retrieval(5, 4), 0.90), (k4, 0.92)], 0.03) == (k4, 0.92)
    assert cheapest_within_noise([], 0.03) is None


def rollout_on(version: ResourceVersion) -> Any:
    return cast(Any, SimpleNamespace(resource=lambda name: version))


def test_a_prompt_bound_to_a_model_version_is_answered_by_that_models_server() -> None:
    agent = SupportAgent("http://127.0.0.1:9/v1", "gemma-3-270m")
    client, model = agent.endpoint(rollout_on(retrieval(2, 4)))
    assert (client, model) == (agent.client, "gemma-3-270m")
    with pytest.raises(LookupError, match="no model server for support-model"):
        agent.endpoint(rollout_on(SFT))
    agent.serve(MODEL_RESOURCE, "http://127.0.0.1:10/v1")
    client, model = agent.endpoint(rollout_on(SFT))
    assert model == f"{MODEL_RESOURCE}:v1"
    assert client is not agent.client and str(client.base_url).startswith("http://127.0.0.1:10/v1")


def test_apo_proposes_no_bootstrapped_demonstrations_when_asked_for_none(tmp_path: Any) -> None:
    from agentstream.settings import Settings
    from agentstream.trainers.apo import APOConfig, APOTrainer

    settings = Settings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:9")  # never dialled

    def strategies(**config: Any) -> list[str]:
        trainer = APOTrainer(
            APOConfig(resource_name=PROMPT_RESOURCE, **config),
            settings,
            evaluator=cast(Any, None),
            val_items=[{"text": "x"}],
            store=cast(Any, SimpleNamespace()),
        )
        return trainer.strategies()

    assert strategies(retrieval_pool="support-prompt.demos") == ["retrieval", "demos"]
    assert strategies(retrieval_pool="support-prompt.demos", demos=0) == ["retrieval"]
    with pytest.raises(ValueError, match="cannot propose"):
        strategies(demos=0)
