"""Whole A/B experiments, simulated as the promotion controller runs them: rollouts arrive one at a
time, each to the candidate or to production at random (the runners' 50/50 split), and the policy
looks at the cumulative counts every ``look_every`` rollouts until it promotes or rolls back (a
``max_samples`` policy always ends). Used by ``tests/unit/test_promotion_sequential.py`` and
``benchmarks/ab_false_promotions.py``.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

from agentstream.streams.promotion_policy import ArmStats, PromotionPolicy


@dataclass(frozen=True)
class Outcome:
    """How one simulated experiment ended: its action and the candidate's rollouts at that look."""

    action: str
    candidate_n: int
    production_n: int


def run_experiment(
    policy: PromotionPolicy,
    p_candidate: float,
    p_production: float,
    rng: random.Random,
    *,
    look_every: int = 4,
    max_rollouts: int = 10_000,
) -> Outcome:
    """One experiment until the policy decides (or ``max_rollouts`` in all: a hold)."""
    n_c = x_c = n_p = x_p = 0
    for i in range(1, max_rollouts + 1):
        if rng.random() < 0.5:
            n_c += 1
            x_c += rng.random() < p_candidate
        else:
            n_p += 1
            x_p += rng.random() < p_production
        if i % look_every == 0:
            action = policy.decide(ArmStats(n_c, x_c), ArmStats(n_p, x_p)).action
            if action != "hold":
                return Outcome(action, n_c, n_p)
    return Outcome("hold", n_c, n_p)


@dataclass(frozen=True)
class Figures:
    """Many experiments of one design and one pair of true rates."""

    runs: int
    promoted: int
    rolled_back_on_evidence: int
    median_candidate_rollouts: float

    @property
    def promote_rate(self) -> float:
        return self.promoted / self.runs


def simulate(
    policy: PromotionPolicy,
    p_candidate: float,
    p_production: float,
    *,
    runs: int,
    seed: int,
    look_every: int = 4,
) -> Figures:
    """``runs`` experiments with a fixed seed. ``rolled_back_on_evidence`` leaves out the
    ``max_samples`` rollbacks (an inconclusive end, not a finding)."""
    rng = random.Random(seed)
    outcomes = [
        run_experiment(policy, p_candidate, p_production, rng, look_every=look_every) for _ in range(runs)
    ]
    on_evidence = sum(
        o.action == "rollback" and (policy.max_samples is None or o.candidate_n < policy.max_samples)
        for o in outcomes
    )
    return Figures(
        runs=runs,
        promoted=sum(o.action == "promote" for o in outcomes),
        rolled_back_on_evidence=on_evidence,
        median_candidate_rollouts=statistics.median(o.candidate_n for o in outcomes),
    )


def wilson_bounds(successes: int, runs: int, z: float = 2.326) -> tuple[float, float]:
    """The Wilson score (lower, upper) bounds of a binomial rate (z = 2.326: each one-sided 99%)."""
    p = successes / runs
    centre = p + z * z / (2 * runs)
    spread = z * ((p * (1 - p) / runs + z * z / (4 * runs * runs)) ** 0.5)
    scale = 1 + z * z / runs
    return (centre - spread) / scale, (centre + spread) / scale
