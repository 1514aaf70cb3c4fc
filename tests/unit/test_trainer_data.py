"""Triplets as training rows, the triplet filter and window ids (no broker, no model)."""

from __future__ import annotations

import json
import time

from agentstream.schemas import Triplet
from agentstream.schemas.genai import openai_messages_to_otel
from agentstream.trainers.data import (
    dpo_pairs,
    grpo_groups,
    kto_rows,
    prompt_text,
    response_text,
    sft_rows,
    task_key,
)
from agentstream.trainers.runtime import TripletFilter, TripletWindow, window_ends


def make(prompt: object, response: object, reward: float | None, **fields: object) -> Triplet:
    now = time.time_ns() // 1_000
    if isinstance(prompt, list):
        prompt = json.dumps(openai_messages_to_otel(prompt))
    if isinstance(response, dict):
        response = json.dumps(openai_messages_to_otel([response]))
    base = {
        "triplet_id": f"t{now}",
        "rollout_id": "ro-1",
        "span_id": "s",
        "prompt_messages": prompt,
        "response": response,
        "reward": reward,
        "created_at": now,
        "emitted_at": now,
        "mode": "train",
    }
    return Triplet(**{**base, **fields})


QUESTION = [{"role": "system", "content": "Add."}, {"role": "user", "content": "2+2?"}]


def test_prompts_and_responses_from_otel_messages_and_plain_text() -> None:
    t = make(QUESTION, {"role": "assistant", "content": "4"}, 1.0)
    assert prompt_text(t) == "Add.\n2+2?" and response_text(t) == "4"
    plain = make("Q: 2+2? A:", " 4", 1.0)
    assert prompt_text(plain) == "Q: 2+2? A:" and response_text(plain) == " 4"
    call = make(
        QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
            ],
        },
        1.0,
    )
    assert json.loads(response_text(call)) == [{"name": "add", "arguments": '{"a": 2}'}]


def test_sft_and_kto_rows() -> None:
    good = make(QUESTION, {"role": "assistant", "content": "4"}, 1.0)
    bad = make(QUESTION, {"role": "assistant", "content": "5"}, 0.0)
    empty = make(QUESTION, {"role": "assistant", "content": ""}, 1.0)
    assert sft_rows([good, empty], "messages") == [
        {"messages": [*QUESTION, {"role": "assistant", "content": "4"}]}
    ]
    assert sft_rows([good], "text") == [{"prompt": "Add.\n2+2?", "completion": "4"}]
    rows = kto_rows([good, bad, make("p", "r", None)], "text", threshold=0.5)
    assert [(r["completion"], r["label"]) for r in rows] == [("4", True), ("5", False)]


def test_tasks_pairs_and_groups() -> None:
    other = [{"role": "user", "content": "3+3?"}]
    logged = [
        make(QUESTION, {"role": "assistant", "content": a}, r)
        for a, r in [("4", 1.0), ("5", 0.0), ("6", 0.2)]
    ]
    logged += [make(other, {"role": "assistant", "content": "6"}, 1.0)]  # one attempt: no pair, no group
    logged += [make(QUESTION, {"role": "assistant", "content": "3"}, None)]  # no reward yet
    assert task_key(logged[0]) == task_key(logged[1]) != task_key(logged[3])
    assert dpo_pairs(logged, "text") == [{"prompt": "Add.\n2+2?", "chosen": "4", "rejected": "5"}]
    assert dpo_pairs(logged, "text", min_margin=1.0) == []
    groups = grpo_groups(logged, group_size=4)
    [(key, group)] = groups.items()
    assert key.startswith(task_key(logged[0]))
    assert [a.reward for a in group] == [1.0, 0.0, 0.2, 1.0]  # three attempts, the first repeated to fill 4
    same = [make(other, {"role": "assistant", "content": str(i)}, 1.0) for i in range(4)]
    assert grpo_groups(same, group_size=4) == {}  # equal rewards: every advantage would be zero


def test_filter() -> None:
    t = make("p", "r", 0.7, task_type="math", resource_name="prompt")
    assert TripletFilter().accepts(t)
    assert not TripletFilter(min_reward=0.8).accepts(t)
    assert not TripletFilter(task_types=("code",)).accepts(t)
    assert not TripletFilter(resource_name="other").accepts(t)
    assert not TripletFilter().accepts(t.model_copy(update={"mode": "val"}))
    assert not TripletFilter().accepts(t.model_copy(update={"reward": None}))
    assert TripletFilter(require_reward=False).accepts(t.model_copy(update={"reward": None}))


def test_window_ids_and_ends() -> None:
    window = TripletWindow(
        topic="x.triplets",
        group_id="g",
        ranges={0: (0, 5), 2: (3, 9)},
        triplets=[],
        records=11,
        closed_by="count",
    )
    same = TripletWindow(
        topic="x.triplets",
        group_id="g",
        ranges={2: (3, 9), 0: (0, 5)},
        triplets=[],
        records=11,
        closed_by="time",
    )
    assert window.window_id == same.window_id
    assert (
        window.window_id
        != TripletWindow("x.triplets", "h", {0: (0, 5), 2: (3, 9)}, [], 11, "count").window_id
    )

    class Version:
        resource_name, version = "r", 1

        def __init__(self, lineage: dict[str, str]) -> None:
            self.lineage = lineage

    later = TripletWindow("x.triplets", "g", {0: (5, 7)}, [], 2, "count")
    versions = [Version(window.lineage()), Version(later.lineage()), Version({"trainer": "apo"})]
    assert window_ends(versions, "x.triplets", "g") == {0: 7, 2: 9}  # type: ignore[arg-type]
    assert window_ends(versions, "x.triplets", "other") == {}  # type: ignore[arg-type]
