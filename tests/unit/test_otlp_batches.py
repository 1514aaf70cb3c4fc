"""Property: any split of a set of OTLP spans into batches, in any order, gives the same span and
reward records, and the same final triplet credits once they are fed to the joiner's RolloutJoin."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentstream.producers.otlp.decode import OtlpSpan
from agentstream.producers.otlp.dialects import normalise_spans
from agentstream.producers.otlp.files import read_file
from agentstream.schemas.rollout_event import CreditAssignment
from agentstream.streams.join import RolloutJoin, is_evaluation_span, llm_call_of, reward_event_of

DATA = Path(__file__).parent.parent / "data" / "otlp"
BASE_NS = 1_760_000_000_000_000_000


def _fixture_spans() -> list[OtlpSpan]:
    spans: list[OtlpSpan] = []
    for name in (
        "agent_training_legacy.jsonl",
        "agl_dump.json",
        "otel_genai_current.json",
        "openinference.json",
    ):
        for batch in read_file(DATA / name):
            spans += batch.spans
    return spans


FIXTURE_SPANS = _fixture_spans()


@st.composite
def rollout_spans(draw: st.DrawFn, index: int) -> list[OtlpSpan]:
    """One Agent Lightning-style rollout: indexed-attribute calls and reward annotation spans."""
    trace = f"{index:032x}"
    resource = {
        "agentlightning.rollout_id": f"ro-{index % 3}",
        "agentlightning.attempt_id": f"at-{index % 2}",
    }
    spans = []
    times = draw(st.lists(st.integers(0, 50), min_size=1, max_size=6))
    for k, start in enumerate(times):
        is_reward = draw(st.booleans())
        span_id = f"{index:08x}{k:08x}"
        if is_reward:
            dimensions = draw(
                st.lists(st.sampled_from(["primary", "format", "speed"]), min_size=1, max_size=2, unique=True)
            )
            attributes: dict[str, Any] = {}
            for d, name in enumerate(dimensions):
                attributes[f"agentlightning.reward.{d}.name"] = name
                attributes[f"agentlightning.reward.{d}.value"] = draw(
                    st.floats(-1, 1, allow_nan=False, width=32)
                )
            name = "agentlightning.annotation"
        else:
            attributes = {
                "llm.request.type": "chat",
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": f"q{index}.{k}",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": f"a{index}.{k}",
                "gen_ai.response.id": f"resp-{index}-{k}",
                "prompt_token_ids": [1, k],
                "response_token_ids": [2, k],
            }
            name = "openai.chat"
        start_ns = BASE_NS + start * 1_000_000_000
        spans.append(
            OtlpSpan(
                trace,
                span_id,
                None,
                name,
                3,
                start_ns,
                start_ns + 500_000_000,
                0,
                "",
                attributes,
                [],
                resource,
            )
        )
    return spans


@st.composite
def batched(draw: st.DrawFn) -> tuple[list[OtlpSpan], list[list[OtlpSpan]]]:
    generated = [span for i in range(draw(st.integers(0, 4))) for span in draw(rollout_spans(i))]
    spans = FIXTURE_SPANS + generated
    order = draw(st.permutations(range(len(spans))))
    cuts = sorted(draw(st.lists(st.integers(0, len(spans)), max_size=8)))
    shuffled = [spans[i] for i in order]
    bounds = [0, *cuts, len(spans)]
    return spans, [shuffled[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _key(datum: dict[str, Any]) -> str:
    return json.dumps(datum, sort_keys=True, default=str)


def _records(batches: Sequence[Sequence[OtlpSpan]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spans: list[dict[str, Any]] = []
    rewards: list[dict[str, Any]] = []
    for batch in batches:
        out = normalise_spans(batch)
        assert out.rejected == []
        spans += out.spans
        rewards += out.rewards
    return spans, rewards


def _credits(
    spans: list[dict[str, Any]],
    rewards: list[dict[str, Any]],
    strategy: str,
    rnd: random.Random | None = None,
) -> dict[str, Any]:
    """Feed the records (spans first, or shuffled together by ``rnd``) into one RolloutJoin per
    rollout as the joiner does; the final credited triplets (id -> step and credit)."""
    joins: dict[str, RolloutJoin] = {}
    events: list[tuple[str, dict[str, Any]]] = [("span", s) for s in spans] + [("reward", r) for r in rewards]
    if rnd is not None:
        rnd.shuffle(events)
    by_rollout: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for kind, datum in events:
        by_rollout[datum["rollout_id"]].append((kind, datum))
    final: dict[str, Any] = {}
    for rollout_id, items in by_rollout.items():
        join = joins.setdefault(rollout_id, RolloutJoin(rollout_id, strategy))
        for kind, datum in items:
            if kind == "reward":
                join.add_reward(reward_event_of(datum))
            elif datum["kind"] == "llm":
                join.add_call(llm_call_of(datum))
            else:
                join.add_span_link(datum["span_id"], datum["parent_span_id"], is_evaluation_span(datum))
            join.changes()
        for update in join.emitted():
            if update.credit is not None:
                final[update.triplet_id] = (update.step, update.credit)
    return final


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=batched(),
    strategy=st.sampled_from([s.value for s in CreditAssignment]),
    rnd=st.randoms(use_true_random=False),
)
def test_any_split_and_order_gives_the_same_records_and_credits(
    data: tuple[list[OtlpSpan], list[list[OtlpSpan]]], strategy: str, rnd: random.Random
) -> None:
    spans, batches = data
    reference_spans, reference_rewards = _records([spans])
    got_spans, got_rewards = _records(batches)
    assert sorted(map(_key, got_spans)) == sorted(map(_key, reference_spans))
    assert sorted(map(_key, got_rewards)) == sorted(map(_key, reference_rewards))
    reference = _credits(reference_spans, reference_rewards, strategy)
    # the credits of the one-batch input, fed in the order the batches produced them
    assert _credits(got_spans, got_rewards, strategy) == reference
    # and with spans and rewards interleaved in any order
    assert _credits(got_spans, got_rewards, strategy, rnd) == reference
    assert reference  # the fixtures' rollouts do get credit


def test_normalising_is_deterministic_per_span() -> None:
    once = normalise_spans(FIXTURE_SPANS)
    again = normalise_spans(list(reversed(FIXTURE_SPANS)))
    assert sorted(map(_key, once.spans)) == sorted(map(_key, again.spans))
    assert sorted(map(_key, once.rewards)) == sorted(map(_key, again.rewards))
