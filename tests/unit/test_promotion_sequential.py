"""The sequential (mSPRT) promotion test over whole simulated experiments.

The controller looks at growing counts every few seconds and acts on the first conclusive look, so
what matters is the false-promotion rate over a whole experiment, not per look. Each experiment is
run the way the controller runs it (``tests/ab_simulation.py``): rollouts 50/50 to the arms, a look
every 4 rollouts (about 2 per arm), ``min_samples`` 30 and ``max_samples`` 150 as in the demo.
Seeds are fixed; each bound is checked with a one-sided 99% Wilson bound of the observed rate, so a
pass is not a lucky draw.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from agentstream.settings import Settings
from agentstream.settings.sections import PromotionSettings
from agentstream.streams.promotion import PromotionController
from agentstream.streams.promotion_policy import (
    MSPRT_TEST,
    Z_TEST,
    ArmStats,
    PromotionPolicy,
    msprt_log_lr,
    msprt_p_value,
)
from tests.ab_simulation import simulate, wilson_bounds

DEMO = {"min_samples": 30, "max_samples": 150}


@pytest.mark.parametrize("rate", [0.5, 0.8])
def test_aa_false_promotions_over_whole_experiments_stay_under_alpha(rate: float) -> None:
    """2000 A/A experiments, about 60 looks each: promoted at most 5% of the time (99% bound)."""
    policy = PromotionPolicy(alpha=0.05, **DEMO)
    figures = simulate(policy, rate, rate, runs=2000, seed=1601, look_every=4)
    _, high = wilson_bounds(figures.promoted, figures.runs)
    assert high <= policy.alpha, f"{figures.promoted}/{figures.runs} promoted, 99% upper bound {high:.3f}"
    _, high = wilson_bounds(figures.rolled_back_on_evidence, figures.runs)
    assert high <= policy.alpha


def test_the_per_look_z_test_fails_the_same_aa_bound() -> None:
    """Why the z-test is no longer the default: re-run on every look it promotes equal arms far
    more often than alpha (about 16-19% here)."""
    policy = PromotionPolicy(alpha=0.05, test="z", **DEMO)
    figures = simulate(policy, 0.5, 0.5, runs=1000, seed=1602, look_every=4)
    low, _ = wilson_bounds(figures.promoted, figures.runs)
    assert low > 0.10, f"{figures.promoted}/{figures.runs} promoted, 99% lower bound {low:.3f}"


@pytest.mark.parametrize(
    ("p_candidate", "p_production", "at_least"),
    [(0.8, 0.5, 0.97), (0.6, 0.2, 0.97), (0.3, 0.1, 0.85)],
)
def test_real_gains_are_promoted_within_max_samples(
    p_candidate: float, p_production: float, at_least: float
) -> None:
    """Power: gains of 20-40 points (the demo's) are promoted within 150 candidate rollouts."""
    figures = simulate(PromotionPolicy(**DEMO), p_candidate, p_production, runs=400, seed=1603)
    low, _ = wilson_bounds(figures.promoted, figures.runs)
    assert low >= at_least, f"{figures.promoted}/{figures.runs} promoted"
    assert figures.median_candidate_rollouts < 150


def test_a_real_loss_is_rolled_back_on_evidence() -> None:
    figures = simulate(PromotionPolicy(**DEMO), 0.5, 0.8, runs=400, seed=1604)
    assert figures.promoted == 0
    assert figures.rolled_back_on_evidence / figures.runs >= 0.95


# -- the formulas ----------------------------------------------------------------------------------


def test_msprt_likelihood_ratio_matches_the_paper_for_paired_samples() -> None:
    """Johari et al.'s two-sample form with n pairs and per-arm variance s2:
    Lambda = sqrt(2 s2 / (2 s2 + n tau^2)) exp(n^2 tau^2 d^2 / (4 s2 (2 s2 + n tau^2)))."""
    n, s2, tau, d = 120, 0.21, 0.2, 0.13
    paper = math.sqrt(2 * s2 / (2 * s2 + n * tau**2)) * math.exp(
        n**2 * tau**2 * d**2 / (4 * s2 * (2 * s2 + n * tau**2))
    )
    assert math.exp(msprt_log_lr(d, 2 * s2 / n, 0.0, tau)) == pytest.approx(paper)
    assert msprt_p_value(d, 2 * s2 / n, 0.0, tau) == pytest.approx(1 / paper)
    assert msprt_p_value(0.0, 2 * s2 / n, 0.0, tau) == 1.0  # Lambda < 1: p is capped at 1


def test_decisions_follow_the_mixture_ratio() -> None:
    policy = PromotionPolicy()
    verdict = policy.decide(ArmStats(100, 80), ArmStats(100, 50))
    assert verdict.action == "promote" and verdict.test == MSPRT_TEST
    p_c, p_p = 81 / 102, 51 / 102
    variance = p_c * (1 - p_c) / 102 + p_p * (1 - p_p) / 102
    assert verdict.statistic == pytest.approx(msprt_log_lr(p_c - p_p, variance, 0.0, 0.2))
    assert verdict.p_value == pytest.approx(msprt_p_value(p_c - p_p, variance, 0.0, 0.2))
    assert "log LR" in verdict.reason
    # The same data the other way round is a rollback with the same evidence.
    back = policy.decide(ArmStats(100, 50), ArmStats(100, 80))
    assert back.action == "rollback" and back.p_value == pytest.approx(verdict.p_value)
    # A difference below the margin is no evidence for promotion, however large |d| is.
    assert back.action != "promote"


def test_msprt_needs_more_evidence_than_one_z_look() -> None:
    # 75/100 vs 60/100: z = 2.2 promotes on one look; the always-valid p-value is not yet < 0.05.
    candidate, production = ArmStats(100, 75), ArmStats(100, 60)
    assert PromotionPolicy(test="z").decide(candidate, production).action == "promote"
    verdict = PromotionPolicy().decide(candidate, production)
    assert verdict.action == "hold" and verdict.p_value is not None and verdict.p_value > 0.05
    assert PromotionPolicy(test="z").decide(candidate, production).test == Z_TEST


def test_margins_apply_to_the_sequential_test() -> None:
    candidate, production = ArmStats(800, 600), ArmStats(800, 520)  # +10 points
    assert PromotionPolicy().decide(candidate, production).action == "promote"
    assert PromotionPolicy(margin=0.05).decide(candidate, production).action == "hold"
    assert PromotionPolicy(margin=0.12).decide(candidate, production).p_value == 1.0
    assert PromotionPolicy(rollback_margin=0.12).decide(production, candidate).action == "hold"


def test_new_parameters_are_validated() -> None:
    for bad in ({"tau": 0.0}, {"tau": 1.0}, {"test": "t"}):
        with pytest.raises(ValueError):
            PromotionPolicy(**bad)  # type: ignore[arg-type]


def test_the_controller_takes_its_test_and_modes_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = Settings(bootstrap_servers="127.0.0.1:9", data_dir=tmp_path).promotion
    assert (defaults.test, defaults.tau, defaults.modes) == ("msprt", 0.2, ["train", "prod"])
    monkeypatch.setenv("AGENTSTREAM_PROMOTION__TEST", "z")
    monkeypatch.setenv("AGENTSTREAM_PROMOTION__MODES", '["prod"]')
    settings = Settings(bootstrap_servers="127.0.0.1:9", data_dir=tmp_path)  # never contacted
    controller = PromotionController(settings)
    try:
        assert controller.policy.test == "z" and controller.policy.test_name == Z_TEST
        assert controller.book.modes == {"prod"}
    finally:
        controller.close()
    for bad in ({"tau": 0.0}, {"modes": []}, {"test": "t"}):
        with pytest.raises(ValidationError):
            PromotionSettings(**bad)  # type: ignore[arg-type]
