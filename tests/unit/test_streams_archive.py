"""Reading back what a worker lost (streams/archive.py), against an archive held in memory."""

from __future__ import annotations

from typing import Any

from agentstream.schemas import AttemptState, RolloutState, RolloutStatus
from agentstream.streams import metrics as version_metrics
from agentstream.streams.archive import CallArchive, MetricsRecount

HOUR_US = 3600 * 10**6
START = 1_700_000_000_000_000 // HOUR_US * HOUR_US


def ended(rollout_id: str, at_us: int, version: str = "v1", reward: float = 1.0) -> RolloutState:
    return RolloutState(
        rollout_id=rollout_id,
        status=RolloutStatus.SUCCEEDED,
        resources={"prompt": version},
        attempts=[
            AttemptState(attempt_number=1, status="succeeded", started_at=at_us - 1000, ended_at=at_us)
        ],
        created_at=at_us - 2000,
        updated_at=at_us,
        ended_at=at_us,
        reward_count=1,
        reward_sum=reward,
        reward_sum_squares=reward * reward,
    )


class MemoryArchive:
    def __init__(self, revision: int, states: list[RolloutState], spans: list[dict[str, Any]] | None = None):
        self.revision, self.states, self.spans = revision, states, spans or []
        self.versions: dict[str, int] = {}
        self.broken = False

    def triplet_versions(self, rollout_id: str) -> dict[str, int]:
        if self.broken:
            raise ConnectionError("down")
        return self.versions

    def llm_spans(self, rollout_id: str) -> list[dict[str, Any]]:
        if self.broken:
            raise ConnectionError("down")
        return [s for s in self.spans if s["rollout_id"] == rollout_id]

    def stored_revision(self, name: str, version: str, window_start_us: int, partition: int) -> int:
        return self.revision

    def ended_states(self, partition: int, start_us: int, end_us: int) -> list[RolloutState]:
        return self.states


def test_a_lost_partial_is_recounted_above_the_stored_revision_from_its_window_and_version_only() -> None:
    states = [
        ended("a", START + 10),
        ended("b", START + 20, reward=0.5),
        ended("other-version", START + 30, version="v2"),
        ended("next-window", START + HOUR_US + 1),
    ]
    recount = MetricsRecount(MemoryArchive(revision=7, states=states), window_seconds=3600)
    key = version_metrics.partial_key("prompt", "v1", START, 0)
    partial = recount.partial(key)
    assert partial is not None
    assert (partial["rollouts"], partial["succeeded"], partial["rewards"], partial["reward_sum"]) == (
        2,
        2,
        2,
        1.5,
    )
    assert partial["revision"] == 8 and partial[version_metrics.RECOUNTED] == ["a", "b"]
    record = version_metrics.to_record(key, partial, START)  # the ids do not go out with the record
    assert record.rollouts == 2


def test_a_recount_counts_the_rollouts_of_its_partials_mode_only() -> None:
    val = ended("v", START + 40).model_copy(update={"mode": "val"})
    recount = MetricsRecount(MemoryArchive(revision=3, states=[ended("a", START + 10), val]), 3600)
    partial = recount.partial(version_metrics.partial_key("prompt", "v1", START, 0, "val"))
    assert partial is not None and partial[version_metrics.RECOUNTED] == ["v"]
    partial = recount.partial(version_metrics.partial_key("prompt", "v1", START, 0, "train"))
    assert partial is not None and partial[version_metrics.RECOUNTED] == ["a"]


def test_a_new_window_or_no_archive_means_no_recount() -> None:
    key = version_metrics.partial_key("prompt", "v1", START, 0)
    assert MetricsRecount(MemoryArchive(revision=0, states=[ended("a", START)]), 3600).partial(key) is None
    assert MetricsRecount(None, 3600).partial(key) is None


def test_calls_are_read_back_with_their_content_and_a_failing_archive_answers_none() -> None:
    span = {
        "rollout_id": "r",
        "span_id": "s1",
        "attempt_id": "r#1",
        "sequence_id": 3,
        "start_time": START,
        "end_time": START + 5,
        "attributes": {"gen_ai.input.messages": "[1]", "gen_ai.response.id": "resp-1"},
        "prompt_token_ids": [1, 2],
        "response_token_ids": [3],
        "response_logprobs": [-0.5],
        "resource_name": "prompt",
        "resource_version": "v1",
    }
    archive = MemoryArchive(revision=0, states=[], spans=[span])
    calls = CallArchive(archive)
    [(call, content)] = calls.calls_of("r") or []
    assert (call.span_id, call.sequence_id, call.response_id) == ("s1", 3, "resp-1")
    assert content["prompt"] == "[1]" and content["prompt_ids"] == [1, 2]
    archive.versions = {"tr-1": 3}
    assert calls.triplet_versions("r") == {"tr-1": 3}
    archive.broken = True
    assert calls.calls_of("r") is None
    assert calls.triplet_versions("r") == {}
    assert CallArchive(None).triplet_versions("r") == {}


def test_calls_read_back_are_the_rollouts_own_and_keep_what_makes_a_judge() -> None:
    """Span ids are unique per trace only: another rollout's span with the same id is not taken."""
    base = {
        "span_id": "s1",
        "attempt_id": "a#1",
        "sequence_id": 0,
        "start_time": START,
        "end_time": START + 5,
        "prompt_token_ids": [],
        "response_token_ids": [],
        "response_logprobs": [],
        "resource_name": "prompt",
        "resource_version": "v1",
    }
    mine = {**base, "rollout_id": "r", "attributes": {"gen_ai.input.messages": "[mine]"}}
    judge = {
        **base,
        "span_id": "s2",
        "rollout_id": "r",
        "parent_span_id": "ev",
        "attributes": {},
        "bool_attributes": {"agentstream.judge": True},
    }
    foreign = {**base, "rollout_id": "other", "attributes": {"gen_ai.input.messages": "[foreign]"}}

    class Careless(MemoryArchive):
        def llm_spans(self, rollout_id: str) -> list[dict[str, Any]]:
            return self.spans  # an archive that answers more than it was asked

    found = CallArchive(Careless(revision=0, states=[], spans=[foreign, mine, judge])).calls_of("r") or []
    assert [(call.span_id, content["prompt"]) for call, content in found] == [("s1", "[mine]"), ("s2", "[]")]
    assert [(call.parent_span_id, call.judge) for call, _ in found] == [(None, False), ("ev", True)]
