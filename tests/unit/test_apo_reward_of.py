"""Which reward ranks a triplet's call in APO: the sum of its dimensions, the scalar, or one dimension."""

from __future__ import annotations

from agentstream.schemas import Triplet
from agentstream.trainers.apo import reward_of


def _triplet(reward: float | None, dimensions: dict[str, float]) -> Triplet:
    return Triplet(
        triplet_id="tr-1",
        rollout_id="r",
        span_id="s",
        prompt_messages="[]",
        response="[]",
        reward=reward,
        reward_dimensions=dimensions,
        created_at=1,
        emitted_at=2,
    )


def test_sum_adds_the_dimensions_the_scalar_is_the_primary_one() -> None:
    routed_and_resolved = _triplet(1.0, {"routing": 1.0, "resolution": 1.0})
    assert reward_of(routed_and_resolved, "sum") == 2.0
    assert reward_of(routed_and_resolved, "primary") == 1.0
    assert reward_of(routed_and_resolved, "resolution") == 1.0
    assert reward_of(routed_and_resolved, "speed") is None


def test_a_triplet_without_dimensions_ranks_by_its_scalar() -> None:
    assert reward_of(_triplet(0.5, {}), "sum") == 0.5
    assert reward_of(_triplet(None, {}), "sum") is None
