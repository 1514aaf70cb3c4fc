"""Retrieved demonstrations: the pool's format, the choice per request, and the rendered prompt."""

from __future__ import annotations

import json

import pytest

from agentstream.producers.prompts import render_prompt
from agentstream.retrieval import (
    BM25Index,
    Demonstration,
    DemonstrationPool,
    PoolError,
    RetrievalSettings,
    render_demonstrations,
    select,
)
from agentstream.retrieval.pool import POOL_URI
from agentstream.schemas import ResourceKind, ResourceVersion, TemplateError, Triplet, now_us
from agentstream.trainers.apo_retrieval import response_prefix, retrieval_config
from agentstream.trainers.demonstrations import Example, examples_of

TEMPLATE = "Route it.\n\n{{demonstrations}}Ticket: {{ticket}}\nAction:"
PREFIX = ' create_ticket({"queue": "'


def call(queue: str) -> str:
    return f' create_ticket({{"queue": "{queue}", "priority": "normal"}})'


def demo(text: str, queue: str, reward: float = 2.0, source: str = "model", at: int = 0) -> Demonstration:
    return Demonstration({"ticket": text}, call(queue), reward, call(queue), source, created_at=at)


POOL = DemonstrationPool(
    [
        demo("I was charged twice for my invoice", "billing", at=1),
        demo("refund for the double charge on my card", "billing", at=2),
        demo("the app crashes when I upload a file", "technical", at=3),
        demo("my parcel never arrived, tracking is stuck", "shipping", at=4),
        demo("cannot log in, password reset email missing", "account", at=5),
        demo("the invoice shows the wrong plan price", "billing", reward=1.0, at=6),
        demo("crash on start after the update", "technical", source="human", at=7),
    ],
    "support-prompt",
)


def pool_version(pool: DemonstrationPool, number: int = 1) -> ResourceVersion:
    return ResourceVersion(
        resource_name="support-prompt.demos",
        version=number,
        kind=ResourceKind.OTHER,
        uri=POOL_URI,
        config=pool.to_config(),
        content_hash=f"h{number}",
        created_at=now_us(),
    )


def prompt_version(config: dict[str, str], template: str = TEMPLATE) -> ResourceVersion:
    return ResourceVersion(
        resource_name="support-prompt",
        version=2,
        kind=ResourceKind.PROMPT_TEMPLATE,
        template=template,
        variables=["demonstrations", "ticket"] if "{{demonstrations}}" in template else ["ticket"],
        config=config,
        created_at=now_us(),
    )


def test_bm25_ranks_the_texts_sharing_rare_terms_first() -> None:
    index = BM25Index(["charged twice on my invoice", "app crashes on upload", "parcel lost in transit"])
    assert [i for i, _ in index.nearest("the app crashes", 3)][0] == 1
    assert index.nearest("the and of", 3) == []  # only stopwords: no evidence at all
    assert BM25Index([]).nearest("anything", 3) == []


@pytest.mark.parametrize("index", ["bm25", "minilm"])
def test_the_nearest_examples_are_chosen_nearest_last_without_the_request_itself(index: str) -> None:
    query = {"ticket": "double charge on my invoice, please refund"}
    chosen = select(POOL, query, RetrievalSettings(pool="p", k=2, index=index))
    [(nearest, _)] = POOL.nearest(query, 1, index)
    assert chosen[-1] is nearest  # nearest last: next to the query the model completes
    assert all(d.outcome == call("billing") for d in chosen)
    ticket = "the app crashes when I upload a file"
    own = select(POOL, {"ticket": ticket}, RetrievalSettings(pool="p", k=1, index=index))
    assert own and own[0].values["ticket"] != ticket  # never the answer itself


@pytest.mark.parametrize("index", ["bm25", "minilm"])
def test_pool_filters_and_the_outcome_cap_spread_the_choice(index: str) -> None:
    query = {"ticket": "invoice charged twice, crashes too"}
    capped = select(POOL, query, RetrievalSettings(pool="p", k=4, per_outcome=1, index=index))
    assert len({d.outcome for d in capped}) == len(capped) == 4
    strict = select(
        POOL, {"ticket": "invoice plan price"}, RetrievalSettings(pool="p", k=5, min_reward=2.0, index=index)
    )
    assert strict and all(d.reward >= 2.0 for d in strict)
    humans = select(
        POOL, {"ticket": "crash"}, RetrievalSettings(pool="p", k=5, sources=("human",), index=index)
    )
    assert [d.source for d in humans] == ["human"]


def test_a_pool_travels_in_a_resource_version_and_merges_without_duplicates() -> None:
    version = pool_version(POOL)
    back = DemonstrationPool.from_version(version)
    assert back.examples == POOL.examples and back.prompt_resource == "support-prompt"
    grown = back.merged(
        [demo("I was charged twice for my invoice", "billing", at=9), demo("new", "account", at=10)], 100
    )
    assert len(grown.examples) == len(POOL.examples) + 1
    assert len(back.merged([], 3).examples) == 3  # bounded: best-rewarded, then newest, kept
    with pytest.raises(PoolError, match="not a demonstration pool"):
        DemonstrationPool.from_version(version.model_copy(update={"config": {"format": "x"}}))
    bad = version.model_copy(update={"config": {**version.config, "examples": '[{"nope": 1}]'}})
    with pytest.raises(PoolError, match="malformed"):
        DemonstrationPool.from_version(bad)


def test_a_retrieving_prompt_renders_its_demonstrations_and_primes_the_response() -> None:
    config = {**RetrievalSettings(pool="support-prompt.demos", k=2).to_config(), "response_prefix": PREFIX}
    resolved = {"support-prompt": prompt_version(config), "support-prompt.demos": pool_version(POOL)}
    prompt = render_prompt(resolved, "support-prompt", {"ticket": "my invoice was charged twice"})
    assert prompt.text.startswith("Route it.\n\nTicket: ")
    assert prompt.text.endswith("Ticket: my invoice was charged twice\nAction:" + PREFIX)
    assert prompt.text.count("Action: create_ticket(") == 3 and len(prompt.demonstrations) == 2
    assert prompt.response('billing", "priority": "high"})') == call("billing").replace("normal", "high")
    assert prompt.pool_version == 1
    # no pool version yet: the prompt renders without demonstrations instead of failing the agent
    bare = render_prompt({"support-prompt": prompt_version(config)}, "support-prompt", {"ticket": "x"})
    assert bare.demonstrations == [] and bare.text == "Route it.\n\nTicket: x\nAction:" + PREFIX
    plain = render_prompt({"p": prompt_version({}, "Ticket: {{ticket}}\nAction:")}, "p", {"ticket": "y"})
    assert plain.text == "Ticket: y\nAction:" and plain.response(" z") == " z"
    # a malformed pool version costs the prompt its demonstrations, never the agent its run
    broken = pool_version(POOL, 9).model_copy(
        update={"config": {"format": "agentstream.demonstration-pool/v1", "examples": "{"}}
    )
    resolved_broken = {"support-prompt": prompt_version(config), "support-prompt.demos": broken}
    assert render_prompt(resolved_broken, "support-prompt", {"ticket": "x"}).demonstrations == []
    with pytest.raises(KeyError, match="not resolved"):
        render_prompt({}, "support-prompt", {"ticket": "x"})
    with pytest.raises(TemplateError, match="demonstrations"):
        render_demonstrations("Ticket: {{ticket}}", [])


def test_the_response_prefix_is_what_every_good_response_shares_across_outcomes() -> None:
    assert response_prefix([call("billing"), call("technical"), call("account")]) == PREFIX
    assert response_prefix([call("billing"), call("billing")]) == ""  # one kind: the prefix is the answer
    good = [Example({"ticket": "t"}, call(q), 2.0, None, "1", 0) for q in ("billing", "shipping")]
    config = retrieval_config("k=4,per_outcome=2", "pool", good, prime=True)
    assert config["retrieval.k"] == "4" and config["retrieval.per_outcome"] == "2"
    assert config["response_prefix"] == PREFIX
    assert "response_prefix" not in retrieval_config("k=8", "pool", good, prime=False)
    with pytest.raises(ValueError, match="bad retrieval_grid entry"):
        retrieval_config("k8", "pool", good, prime=True)


def test_examples_are_recovered_from_primed_retrieving_prompts() -> None:
    config = {**RetrievalSettings(pool="support-prompt.demos", k=2).to_config(), "response_prefix": PREFIX}
    version = prompt_version(config)
    resolved = {"support-prompt": version, "support-prompt.demos": pool_version(POOL)}
    prompt = render_prompt(resolved, "support-prompt", {"ticket": "lost parcel"})
    now = now_us()
    triplet = Triplet(
        triplet_id="t1",
        rollout_id="r1",
        span_id="s1",
        prompt_messages=json.dumps([{"role": "user", "parts": [{"type": "text", "content": prompt.text}]}]),
        response=json.dumps(
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": 'shipping", "priority": "normal"})'}],
                }
            ]
        ),
        reward=1.0,
        reward_dimensions={"routing": 1.0, "resolution": 1.0},
        resource_name="support-prompt",
        resource_version="2",
        mode="train",
        created_at=now,
        emitted_at=now,
    )
    [example] = examples_of([triplet], {2: version})
    assert example.values == {"ticket": "lost parcel"}  # the demonstrations are not an input
    assert example.response == call("shipping") and example.reward == 2.0


def test_an_evaluation_reports_success_per_group() -> None:
    from agentstream.trainers.evaluation import Evaluation

    evaluation = Evaluation("p", 1, "test", ["a", "b", "c", "d"], scores=[1.0, 0.0, 1.0, 1.0])
    assert evaluation.score_by(["billing", "billing", "shipping", "shipping"]) == {
        "billing": 0.5,
        "shipping": 1.0,
    }
    with pytest.raises(ValueError, match="3 groups for 4 scores"):
        evaluation.score_by(["x", "y", "z"])
