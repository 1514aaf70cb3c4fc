"""APO end to end on a small split: a real stream worker, a runner executing the support agent on the
bundled Gemma model behind llama.cpp's OpenAI-compatible server, triplets from real traffic (with
human handoffs), the demonstration pool curated from them live, candidates (retrieval, bootstrapped
demonstrations, textual gradients) scored by real validation rollouts, and the winner published."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from agentstream.examples.support_agent import (
    DEMO_MIN_REWARD,
    PROMPT_RESOURCE,
    SEED_PROMPT,
    BusinessEvents,
    SupportAgent,
)
from agentstream.examples.tickets import QUEUES, load_tickets
from agentstream.producers.client import AgentStream
from agentstream.producers.runner import Runner
from agentstream.resources.store import ResourceStore
from agentstream.retrieval import DemonstrationPool
from agentstream.serving.llama_cpp import GEMMA_MODEL, LocalLLMServer
from agentstream.settings import Settings
from agentstream.trainers.apo import APOConfig, APOTrainer, split_template, template_regex
from agentstream.trainers.apo_templates import message_text
from agentstream.trainers.demonstrations import CuratorConfig, DemonstrationCurator
from agentstream.trainers.evaluation import RolloutEvaluator
from tests.helpers import WorkerProcess, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLLMServer]:
    log = tmp_path_factory.mktemp("llm") / "llm.log"
    with LocalLLMServer(log_path=log) as server:
        yield server


def stratified(split: str, per_queue: int) -> list[Any]:
    tickets = load_tickets(split)
    return [t for q in QUEUES for t in [t for t in tickets if t.queue == q][:per_queue]]


def task(ticket: Any, temperature: float) -> dict[str, Any]:
    return {
        "ticket_id": ticket.ticket_id,
        "text": ticket.text,
        "queue": ticket.queue,
        "temperature": temperature,
    }


def test_template_parts_round_trip() -> None:
    instruction, query = split_template("Route it.\nMore.\n\nTicket: {{ticket}}\nAction:")
    assert (instruction, query) == ("Route it.\nMore.", "Ticket: {{ticket}}\nAction:")
    pattern = template_regex("A {{x}} and {{ y }} then {{x}}.")
    assert pattern.match("A 1 and two words then 1.").groupdict() == {"x": "1", "y": "two words"}
    assert pattern.match("A 1 and 2 then 3.") is None


def test_apo_improves_the_seed_prompt_with_real_rollouts(settings: Settings, llm: LocalLLMServer) -> None:
    settings = settings.model_copy(
        update={
            "runner": settings.runner.model_copy(
                update={"group_id": f"r-{uuid.uuid4().hex[:6]}", "session_timeout_ms": 2_000}
            ),
            "streams": settings.streams.model_copy(
                update={
                    "session_timeout_ms": 2_000,
                    "heartbeat_interval_ms": 400,
                    "timer_interval_seconds": 0.1,
                }
            ),
        }
    )
    worker = WorkerProcess(settings).start()
    client = AgentStream(settings)
    store = ResourceStore(settings, who="test").open()
    business = BusinessEvents(client, seed=1, delay=(0.05, 0.2))
    pool_name = f"{PROMPT_RESOURCE}.demos"
    curator = DemonstrationCurator(
        CuratorConfig(PROMPT_RESOURCE, min_reward=DEMO_MIN_REWARD, interval_s=1.0), settings, store
    )
    runner = Runner(
        SupportAgent(llm.base_url, GEMMA_MODEL, business=business, api_key=llm.api_key),
        settings,
        client=client,
        concurrency=2,
        resources=store,
    )
    try:
        worker.wait_ready()
        runner.start()
        curator.start()
        seed = store.publish(PROMPT_RESOURCE, template=SEED_PROMPT, labels=["production"])
        with RolloutEvaluator(settings, client, timeout=300) as evaluator:
            # production traffic on the seed: the base model fails, humans file the escalations
            traffic = evaluator.run(
                [task(t, 0.7) for t in stratified("train", 4)], mode="train", resource_name=PROMPT_RESOURCE
            )
            assert set(traffic.versions) == {str(seed.version)}
            business.close()
            assert business.handoffs > 0
            client.flush()
            # the handoffs' triplets reach the pool live, as versions of a resource of its own
            assert store.wait_for(
                lambda s: pool_name in s.names() and "production" in s.labels(pool_name), 60
            )
            pool = DemonstrationPool.from_version(store.get(pool_name, "production"))
            assert pool.examples and {d.source for d in pool.examples} >= {"human"}
            assert all(d.reward >= DEMO_MIN_REWARD for d in pool.examples)
            pool_lineage = store.get(pool_name, "production").lineage
            assert pool_lineage["trainer"] == "curator" and int(pool_lineage["triplets.count"]) > 0

            events: list[tuple[str, dict[str, Any]]] = []
            val = [task(t, 0.0) for t in stratified("val", 2)]
            trainer = APOTrainer(
                APOConfig(
                    resource_name=PROMPT_RESOURCE,
                    beam_width=1,
                    branch_factor=3,
                    rounds=1,
                    demos=4,
                    retrieval_pool=pool_name,
                    retrieval_grid=("k=4",),
                    demo_min_reward=DEMO_MIN_REWARD,
                    optimizer_model=GEMMA_MODEL,
                    optimizer_api="completions",
                    seed=3,
                ),
                settings,
                evaluator=evaluator,
                val_items=val,
                store=store,
                optimizer=openai.OpenAI(base_url=llm.base_url, api_key=llm.api_key),
                on_event=lambda kind, fields: events.append((kind, fields)),
            )
            result = trainer.train()
    finally:
        curator.stop()
        runner.stop()
        store.close()
        client.close()
        worker.stop()

    # the baseline and every candidate were scored by real rollouts on the validation split
    assert result.baseline.evaluation is not None and result.baseline.evaluation.n == len(val)
    assert result.triplets > 0
    strategies = {c.strategy for c in result.candidates}
    assert "demos" in strategies
    skipped = [f for k, f in events if k == "skip"]
    assert "gradient" in strategies or any(f["strategy"] == "gradient" for f in skipped)
    for candidate in result.candidates:
        assert candidate.version.parent_version == seed.version
        assert candidate.version.lineage["apo.stage"] == "evaluation"
        assert candidate.evaluation is not None and candidate.evaluation.n == len(val)
        assert set(candidate.evaluation.versions) == {str(candidate.version.version)}  # pinned
    demos = next(c for c in result.candidates if c.strategy == "demos")
    assert demos.version.template.count("Action: create_ticket(") >= 2  # demonstrations from handoffs
    # the retrieval candidate: demonstrations chosen per request from the pool, the call primed
    retrieving = next(c for c in result.candidates if c.strategy == "retrieval")
    config = retrieving.version.config
    assert config["retrieval.pool"] == pool_name and config["retrieval.k"] == "4"
    assert config["response_prefix"] == ' create_ticket({"queue": "'
    assert "{{demonstrations}}" in retrieving.version.template

    # accepted only when better than the parent; the winner is published as candidate with lineage
    accepted = [f for k, f in events if k == "candidate" and f["accepted"]]
    assert all(f["score"] > f["parent_score"] for f in accepted)
    assert result.winner is not None, [(c.strategy, c.score) for c in result.candidates]
    assert result.winner_score is not None and result.baseline.score is not None
    assert result.winner_score > result.baseline.score
    lineage = result.winner.lineage
    assert lineage["apo.parent_version"] == str(seed.version) and lineage["apo.stage"] == "winner"
    assert float(lineage["val.score"]) == pytest.approx(result.winner_score, abs=1e-4)
    assert int(lineage["triplets.count"]) == result.triplets
    labels = read_topic(settings, settings.topic("resource-labels"), quiet=0.5, timeout=5)
    assert labels[-1]["label"] == "candidate" and labels[-1]["version"] == result.winner.version
    # nothing was learned from the evaluation splits
    triplets = read_topic(settings, settings.topic("triplets"), quiet=0.5, timeout=5)
    assert {t["mode"] for t in triplets} >= {"train", "val"}
    # each validation request of the retrieval candidate saw its own demonstrations, and ended primed
    prompts = {
        message_text(t["prompt_messages"])
        for t in triplets
        if t["resource_version"] == str(retrieving.version.version) and t["mode"] == "val"
    }
    assert len(prompts) == len(val)
    for prompt in prompts:
        assert prompt is not None and prompt.count("Action: create_ticket(") >= 2
        assert prompt.endswith('Action: create_ticket({"queue": "'), prompt[-200:]
