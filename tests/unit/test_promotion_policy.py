"""The A/B promotion policy: folding VersionMetrics partials, and the calibration of its test.

Metric streams are synthetic ``VersionMetrics`` partials over several windows and partitions, each
re-emitted with growing revisions, delivered shuffled and partly duplicated, as the stream workers
and Kafka would deliver them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import pytest

from agentstream.schemas import VersionMetrics
from agentstream.streams.promotion_policy import (
    TEST_NAME,
    ArmStats,
    MetricsBook,
    PromotionPolicy,
    Verdict,
    normal_sf,
)

WINDOW_US = 60_000_000
T0 = 28_333_334 * WINDOW_US  # a window boundary, late 2023
NAME = "support-prompt"
PRODUCTION, CANDIDATE = "3", "4"


def split(total: int, parts: int, rng: random.Random) -> list[int]:
    """``total`` split into ``parts`` non-negative random counts."""
    cuts = sorted(rng.randint(0, total) for _ in range(parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


def partials(
    rng: random.Random,
    version: str,
    n: int,
    successes: int,
    windows: Iterable[int] = range(3),
    partitions: int = 4,
    name: str = NAME,
    mode: str = "train",
) -> list[VersionMetrics]:
    """Every revision of the partials of ``version``: ``successes`` of ``n`` rollouts spread over
    ``windows`` (indexes from T0) x ``partitions``; each partial's last revision holds its totals."""
    keys = [(w, p) for w in windows for p in range(partitions)]
    shares = zip(split(successes, len(keys), rng), split(n - successes, len(keys), rng), strict=True)
    records = []
    for (window, partition), (won, lost) in zip(keys, shares, strict=True):
        fractions = sorted(rng.random() for _ in range(rng.randint(0, 4))) + [1.0]
        for step, fraction in enumerate(fractions):
            rollouts, succeeded = math.floor(fraction * (won + lost)), math.floor(fraction * won)
            succeeded = min(succeeded, rollouts)
            records.append(
                VersionMetrics(
                    resource_name=name,
                    resource_version=version,
                    window_start=T0 + window * WINDOW_US,
                    window_end=T0 + (window + 1) * WINDOW_US,
                    source_partition=partition,
                    mode=mode,
                    revision=rollouts + step + 1,
                    rollouts=rollouts,
                    succeeded=succeeded,
                    failed=rollouts - succeeded,
                    rewards=rollouts,
                    reward_sum=float(succeeded),
                    reward_sum_squares=float(succeeded),
                    emitted_at=T0 + (window + 1) * WINDOW_US + step,
                )
            )
    return records


def final_totals(records: list[VersionMetrics], window_start: int) -> ArmStats:
    """The totals of the last revisions of the partials of ``records`` in one window."""
    last: dict[int, VersionMetrics] = {}
    for r in sorted(records, key=lambda r: r.revision):
        if r.window_start == window_start:
            last[r.source_partition] = r
    return ArmStats(sum(r.rollouts for r in last.values()), sum(r.succeeded for r in last.values()))


def deliver(records: list[VersionMetrics], rng: random.Random) -> MetricsBook:
    """A book fed ``records`` out of order, a third of them twice."""
    delivery = records + rng.sample(records, len(records) // 3)
    rng.shuffle(delivery)
    book = MetricsBook()
    for record in delivery:
        book.add(record)
    return book


def experiment(
    seed: int, candidate: tuple[int, int], production: tuple[int, int], **kw: object
) -> tuple[ArmStats, ArmStats]:
    """(candidate, production) stats read back from a delivered stream of both versions."""
    rng = random.Random(seed)
    records = partials(rng, CANDIDATE, *candidate, **kw) + partials(rng, PRODUCTION, *production, **kw)  # type: ignore[arg-type]
    book = deliver(records, rng)
    stats = book.stats(NAME, CANDIDATE, T0), book.stats(NAME, PRODUCTION, T0)
    assert stats == (ArmStats(*candidate), ArmStats(*production))
    return stats


def binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


# -- MetricsBook -----------------------------------------------------------------------------------


def test_book_keeps_the_highest_revision_under_any_order() -> None:
    rng = random.Random(7)
    records = partials(rng, CANDIDATE, 500, 310, windows=range(5), partitions=6)
    assert len({r.revision for r in records}) > 1
    for seed in range(5):
        book = deliver(records, random.Random(seed))
        assert book.stats(NAME, CANDIDATE, T0) == ArmStats(500, 310)
        assert book.stats(NAME, int(CANDIDATE), T0) == ArmStats(500, 310)
        assert len(book) == 5 * 6


def test_book_add_ignores_older_and_equal_revisions() -> None:
    newer, older = sorted(
        partials(random.Random(1), CANDIDATE, 50, 20, windows=[0], partitions=1),
        key=lambda r: r.revision,
        reverse=True,
    )[:2]
    book = MetricsBook()
    assert book.add(newer)
    assert not book.add(older)
    assert not book.add(newer)
    assert book.stats(NAME, CANDIDATE, T0) == ArmStats(newer.rollouts, newer.succeeded)


def test_book_separates_versions_and_resources() -> None:
    rng = random.Random(2)
    records = (
        partials(rng, "3", 100, 50)
        + partials(rng, "10", 80, 60)
        + partials(rng, "4", 40, 10, name="other-prompt")
    )
    book = deliver(records, rng)
    assert book.versions(NAME) == ["3", "10"]
    assert book.versions("other-prompt") == ["4"]
    assert book.versions("missing") == []
    assert book.stats(NAME, 10, T0) == ArmStats(80, 60)
    assert book.stats(NAME, "4", T0) == ArmStats(0, 0)
    assert book.stats("other-prompt", 4, T0) == ArmStats(40, 10)


def test_book_counts_traffic_modes_only_by_default() -> None:
    """Pinned evaluations (val, test) of the same version, window and partition are partials of
    their own and are left out; so are partials from before modes were recorded (mode "")."""
    rng = random.Random(4)
    by_mode = {"train": (100, 50), "prod": (60, 40), "val": (200, 200), "test": (90, 0), "": (30, 30)}
    records = [r for mode, (n, x) in by_mode.items() for r in partials(rng, CANDIDATE, n, x, mode=mode)]
    book = MetricsBook()
    for record in records:
        book.add(record)
    assert len(book) == 5 * 3 * 4
    assert book.stats(NAME, CANDIDATE, T0) == ArmStats(160, 90)
    every = MetricsBook(modes=None)
    for record in records:
        every.add(record)
    assert every.stats(NAME, CANDIDATE, T0) == ArmStats(480, 320)
    evaluations = MetricsBook(modes=["val"])
    for record in records:
        evaluations.add(record)
    assert evaluations.stats(NAME, CANDIDATE, T0) == ArmStats(200, 200)


def test_since_excludes_earlier_windows() -> None:
    rng = random.Random(3)
    # The candidate was broken in windows 0-1 and fixed from window 2 on.
    early = partials(rng, CANDIDATE, 400, 40, windows=range(2))
    late = partials(rng, CANDIDATE, 400, 320, windows=range(2, 4))
    production = partials(rng, PRODUCTION, 800, 480, windows=range(4))
    book = deliver(early + late + production, rng)
    fixed_at = T0 + 2 * WINDOW_US

    assert book.stats(NAME, CANDIDATE, T0) == ArmStats(800, 360)
    assert book.stats(NAME, CANDIDATE, fixed_at) == ArmStats(400, 320)
    # since_us inside window 2 counts window 2 (the window containing it).
    assert book.stats(NAME, CANDIDATE, fixed_at + WINDOW_US // 2) == ArmStats(400, 320)
    assert book.stats(NAME, CANDIDATE, T0 + 1) == ArmStats(800, 360)  # window 0 on
    window_1 = final_totals(early, window_start=T0 + WINDOW_US)
    assert book.stats(NAME, CANDIDATE, fixed_at - 1) == ArmStats(window_1.n + 400, window_1.successes + 320)
    assert book.stats(NAME, CANDIDATE, T0 + 4 * WINDOW_US) == ArmStats(0, 0)

    policy = PromotionPolicy()
    assert (
        policy.decide(book.stats(NAME, CANDIDATE, T0), book.stats(NAME, PRODUCTION, T0)).action == "rollback"
    )
    since = book.stats(NAME, CANDIDATE, fixed_at), book.stats(NAME, PRODUCTION, fixed_at)
    assert policy.decide(*since).action == "promote"


# -- PromotionPolicy on delivered streams ----------------------------------------------------------


def test_clearly_better_candidate_is_promoted() -> None:
    candidate, production = experiment(10, (300, 240), (300, 180))
    verdict = PromotionPolicy().decide(candidate, production)
    assert verdict.action == "promote"
    assert verdict.test == TEST_NAME
    assert verdict.difference == pytest.approx(0.2)
    assert verdict.statistic is not None and verdict.statistic > 4
    assert verdict.p_value is not None and verdict.p_value < 1e-4
    assert "240/300" in verdict.reason and "180/300" in verdict.reason and "+20.0 pts" in verdict.reason


def test_equal_arms_hold() -> None:
    arms = experiment(11, (400, 260), (400, 260))
    verdict = PromotionPolicy().decide(*arms)
    assert verdict.action == "hold"
    assert verdict.difference == 0.0
    assert verdict.p_value == 1.0  # no difference beyond the margin: no evidence for promotion
    assert "no significant difference" in verdict.reason
    assert PromotionPolicy(test="z").decide(*arms).p_value == pytest.approx(0.5)


def test_clearly_worse_candidate_is_rolled_back() -> None:
    verdict = PromotionPolicy().decide(*experiment(12, (300, 150), (300, 210)))
    assert verdict.action == "rollback"
    assert verdict.difference == pytest.approx(-0.2)
    assert verdict.statistic is not None and verdict.statistic > 4
    assert verdict.p_value is not None and verdict.p_value < 1e-4
    assert "worse" in verdict.reason


def test_below_min_samples_holds() -> None:
    policy = PromotionPolicy(min_samples=30)
    verdict = policy.decide(*experiment(13, (29, 29), (200, 0)))
    # Even a perfect candidate against a dead production waits for its samples.
    assert verdict == Verdict("hold", 1.0, None, None, verdict.reason)
    assert "at least 30" in verdict.reason
    assert policy.decide(*experiment(14, (200, 0), (29, 29))).action == "hold"
    assert policy.decide(ArmStats(0, 0), ArmStats(0, 0)).difference is None
    assert policy.decide(ArmStats(30, 30), ArmStats(30, 0)).action == "promote"


def test_margin_is_respected_even_with_huge_samples() -> None:
    # +1 point on a million rollouts per arm: overwhelmingly significant, but below a 2-point margin.
    candidate, production = experiment(15, (1_000_000, 510_000), (1_000_000, 500_000), partitions=8)
    assert PromotionPolicy(margin=0.0).decide(candidate, production).action == "promote"
    assert PromotionPolicy(margin=0.005).decide(candidate, production).action == "promote"
    verdict = PromotionPolicy(margin=0.02).decide(candidate, production)
    assert verdict.action == "hold"
    assert verdict.p_value is not None and verdict.p_value > 0.99
    # Symmetrically, -1 point is not a rollback under a 2-point rollback margin.
    assert PromotionPolicy(rollback_margin=0.02).decide(production, candidate).action == "hold"
    assert PromotionPolicy().decide(production, candidate).action == "rollback"


def test_max_samples_ends_an_inconclusive_test_with_rollback() -> None:
    candidate, production = experiment(16, (500, 300), (500, 295))
    assert PromotionPolicy(max_samples=1000).decide(candidate, production).action == "hold"
    verdict = PromotionPolicy(max_samples=500).decide(candidate, production)
    assert verdict.action == "rollback"
    assert "inconclusive after 500" in verdict.reason
    # A decisive result still promotes at the limit.
    assert (
        PromotionPolicy(max_samples=300).decide(*experiment(17, (300, 240), (300, 180))).action == "promote"
    )


def test_agresti_caffo_tames_extreme_small_arms() -> None:
    # A plain Wald test promotes 30/30 over 27/30 (z = 1.83); with one success and one failure
    # added to each arm the evidence is too thin.
    verdict = PromotionPolicy(test="z").decide(ArmStats(30, 30), ArmStats(30, 27))
    assert verdict.action == "hold"
    assert verdict.difference == pytest.approx(0.1)
    assert verdict.statistic == pytest.approx(1.4201, abs=1e-3)
    for test in ("z", "msprt"):
        policy = PromotionPolicy(test=test)  # type: ignore[arg-type]
        assert policy.decide(ArmStats(30, 30), ArmStats(30, 27)).action == "hold"
        assert math.isfinite(policy.decide(ArmStats(30, 0), ArmStats(30, 0)).statistic or 0.0)
        assert math.isfinite(policy.decide(ArmStats(30, 30), ArmStats(30, 30)).statistic or 0.0)


def test_parameters_are_validated() -> None:
    for bad in (
        {"alpha": 0.0},
        {"alpha": 1.0},
        {"margin": 1.0},
        {"margin": -0.05},
        {"min_samples": -1},
        {"min_samples": 30, "max_samples": 29},
    ):
        with pytest.raises(ValueError):
            PromotionPolicy(**bad)  # type: ignore[arg-type]
    PromotionPolicy(margin=-0.02, rollback_margin=0.03)  # a non-inferiority test
    with pytest.raises(ValueError):
        ArmStats(10, 11)


# -- Calibration of one look (whole sequential experiments: test_promotion_sequential.py) ----------


def test_false_promotion_rate_in_simulated_aa_experiments() -> None:
    """2000 A/A experiments, 200 rollouts per arm: promotions happen at most alpha (+2 points)."""
    rng = random.Random(20240601)
    policy = PromotionPolicy(alpha=0.05)
    runs, n = 2000, 200
    promoted = rolled_back = 0
    for _ in range(runs):
        rate = rng.choice((0.2, 0.5, 0.7, 0.9))
        action = policy.decide(
            ArmStats(n, binomial(rng, n, rate)), ArmStats(n, binomial(rng, n, rate))
        ).action
        promoted += action == "promote"
        rolled_back += action == "rollback"
    assert promoted / runs <= policy.alpha + 0.02
    assert rolled_back / runs <= policy.alpha + 0.02


def exact_rate(
    policy: PromotionPolicy, action: str, n: int, p_candidate: float, p_production: float
) -> float:
    """P(action) with ``n`` rollouts per arm, by enumerating both binomial distributions."""
    pmf_c = [math.comb(n, k) * p_candidate**k * (1 - p_candidate) ** (n - k) for k in range(n + 1)]
    pmf_p = [math.comb(n, k) * p_production**k * (1 - p_production) ** (n - k) for k in range(n + 1)]
    return sum(
        pc * pp
        for i, pc in enumerate(pmf_c)
        if pc > 1e-12
        for j, pp in enumerate(pmf_p)
        if pp > 1e-12 and policy.decide(ArmStats(n, i), ArmStats(n, j)).action == action
    )


@pytest.mark.parametrize("test", ["msprt", "z"])
@pytest.mark.parametrize("rate", [0.02, 0.1, 0.3, 0.5, 0.8, 0.97])
@pytest.mark.parametrize("n", [30, 200])
def test_exact_false_promotion_rate(n: int, rate: float, test: str) -> None:
    policy = PromotionPolicy(test=test)  # type: ignore[arg-type]
    assert exact_rate(policy, "promote", n, rate, rate) <= 0.05 + 0.02


def test_power_in_simulated_experiments() -> None:
    """A true +20-point improvement (60% -> 80%) at 100 rollouts per arm is promoted > 90% of the
    time by one z-test look."""
    rng = random.Random(99)
    policy = PromotionPolicy(test="z")
    runs, n = 500, 100
    promoted = sum(
        policy.decide(ArmStats(n, binomial(rng, n, 0.8)), ArmStats(n, binomial(rng, n, 0.6))).action
        == "promote"
        for _ in range(runs)
    )
    assert promoted / runs > 0.9


@pytest.mark.parametrize(
    ("production", "at_least"), [(0.1, 0.95), (0.3, 0.88), (0.5, 0.88), (0.6, 0.92), (0.7, 0.95)]
)
def test_exact_power_of_a_20_point_improvement(production: float, at_least: float) -> None:
    # Near 50% (the largest variance) 100 rollouts per arm give about 89.5% power, above 90% elsewhere.
    policy = PromotionPolicy(test="z")
    assert exact_rate(policy, "promote", 100, production + 0.2, production) >= at_least


@pytest.mark.parametrize(
    ("production", "at_least"), [(0.1, 0.97), (0.3, 0.85), (0.5, 0.85), (0.6, 0.9), (0.7, 0.97)]
)
def test_exact_power_of_one_msprt_look(production: float, at_least: float) -> None:
    # The always-valid test pays for its many looks: one look needs 200 rollouts per arm (not 100)
    # for the z-test's power on a 20-point gain.
    assert exact_rate(PromotionPolicy(), "promote", 200, production + 0.2, production) >= at_least


def test_normal_sf() -> None:
    assert normal_sf(0.0) == 0.5
    assert normal_sf(1.6448536269514722) == pytest.approx(0.05)
    assert normal_sf(-1.959963984540054) == pytest.approx(0.975)
    assert 0.0 < normal_sf(10.0) < 1e-22
