"""The A/B promotion policy: fold per-version metric partials, then decide promote, hold or rollback.

Runners split traffic between the ``production`` and ``candidate`` labels of a resource; the
stream workers emit :class:`~agentstream.schemas.VersionMetrics` *partials* per rollout mode (see
:mod:`agentstream.streams.metrics`). :class:`MetricsBook` folds those partials into per-version
totals over the traffic modes only (``train`` and ``prod``: pinned evaluation rollouts, modes
``val`` and ``test``, are not A/B traffic), and :class:`PromotionPolicy` compares the candidate's
success rate with production's.

The controller looks at the growing totals every few seconds and acts on the first look that is
conclusive, so the test must stay valid under continuous monitoring. The default test
(``test="msprt"``, :data:`MSPRT_TEST`) is the **mixture sequential probability ratio test** of
Johari, Pekelis and Walsh (2017, "Always valid inference"), for the difference of two proportions
with a normal approximation. With one success and one failure added to each arm (Agresti-Caffo, so
arms at 0% or 100% still have a non-zero variance),

    p_c = (x_c + 1) / (n_c + 2),    p_p = (x_p + 1) / (n_p + 2),    d = p_c - p_p,
    V   = p_c (1 - p_c) / (n_c + 2) + p_p (1 - p_p) / (n_p + 2)      (the variance of d),

the likelihood ratio of "the true difference is theta0" against a normal mixture of alternatives
``theta ~ N(theta0, tau^2)`` is

    Lambda = sqrt(V / (V + tau^2)) * exp( tau^2 (d - theta0)^2 / (2 V (V + tau^2)) ),

and ``p = min(1, 1 / Lambda)`` is an *always-valid* p-value: under the null, the chance that it
ever drops below ``alpha``, at any of arbitrarily many looks, is at most ``alpha`` (Lambda is a
martingale under the null; Ville's inequality). The always-valid p-value of an experiment is the
running minimum over its looks; since the first look below ``alpha`` ends the experiment, deciding
on each look's ``1 / Lambda`` is the same rule. Two such tests are run:

* **promote** when ``d > margin`` and the test of ``theta0 = margin`` has ``p < alpha``;
* **rollback** when ``d < -rollback_margin`` and the test of ``theta0 = -rollback_margin`` has
  ``p < alpha``;
* **hold** otherwise, and always while either arm has fewer than ``min_samples`` rollouts. Once
  the candidate has ``max_samples`` rollouts without a decision the experiment ends inconclusive
  and production is kept (rollback). Stopping early never makes the test less valid.

Each direction only acts on its own side, so the false-promotion rate of a whole A/A experiment is
at most ``alpha`` (about 1% at ``alpha`` 0.05 in the demo's setting). ``tau`` is the spread of the
differences the test expects: it detects differences of about that size quickest; 0.2 (20 points)
suits prompt changes, which move the success rate by tens of points. The A/A simulations in
``tests/unit/test_promotion_sequential.py`` and ``benchmarks/ab_false_promotions.py`` measure it.

``test="z"`` (:data:`Z_TEST`) keeps the older **one-sided two-proportion z-test** on the same
adjusted ``d`` and ``V``: promote when ``1 - Phi((d - margin) / sqrt(V)) < alpha``, rollback when
``1 - Phi((-d - rollback_margin) / sqrt(V)) < alpha``. Its ``alpha`` holds **per look only**: re-run
on growing data every few seconds, it promotes equal arms far more often than ``alpha`` over a
whole experiment (about 18% in the demo's setting). Use it for one fixed-size look.

``Phi`` is the standard normal CDF, computed with :func:`math.erfc`.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, Protocol

from agentstream.schemas.version_metrics import TRAFFIC_MODES

__all__ = [
    "MSPRT_TEST",
    "TEST_NAME",
    "TRAFFIC_MODES",
    "Z_TEST",
    "Action",
    "ArmStats",
    "MetricsBook",
    "MetricsPartial",
    "PromotionPolicy",
    "TestKind",
    "Verdict",
    "msprt_p_value",
    "normal_sf",
]

#: ``PromotionDecision.test`` of the default sequential test.
MSPRT_TEST = (
    "mSPRT (always-valid), normal mixture on the difference of two proportions, Agresti-Caffo adjusted"
)
#: ``PromotionDecision.test`` of the per-look z-test.
Z_TEST = "one-sided two-proportion z-test, Agresti-Caffo adjusted (per-look alpha)"
#: What :class:`PromotionPolicy` computes by default.
TEST_NAME = MSPRT_TEST

#: What a decision does with the candidate.
Action = Literal["promote", "hold", "rollback"]
#: Which test :class:`PromotionPolicy` runs.
TestKind = Literal["msprt", "z"]

_SQRT2 = math.sqrt(2.0)


def normal_sf(z: float) -> float:
    """``1 - Phi(z)`` for the standard normal, accurate in the upper tail."""
    return 0.5 * math.erfc(z / _SQRT2)


def msprt_log_lr(difference: float, variance: float, theta0: float, tau: float) -> float:
    """``log Lambda``: the normal-mixture likelihood ratio of the module docstring."""
    t2 = tau * tau
    return 0.5 * math.log(variance / (variance + t2)) + t2 * (difference - theta0) ** 2 / (
        2.0 * variance * (variance + t2)
    )


def msprt_p_value(difference: float, variance: float, theta0: float, tau: float) -> float:
    """The mSPRT p-value ``min(1, 1 / Lambda)`` of one look (see the module docstring)."""
    return math.exp(-max(msprt_log_lr(difference, variance, theta0, tau), 0.0))


@dataclass(frozen=True, slots=True)
class ArmStats:
    """One arm of the experiment: ``n`` rollouts, of which ``successes`` succeeded."""

    n: int
    successes: int

    def __post_init__(self) -> None:
        if self.n < 0 or not 0 <= self.successes <= self.n:
            raise ValueError(f"need 0 <= successes <= n, got n={self.n}, successes={self.successes}")

    @property
    def failures(self) -> int:
        """Rollouts that did not succeed (failed, cancelled, timed out)."""
        return self.n - self.successes

    @property
    def rate(self) -> float | None:
        """The raw success rate; ``None`` without rollouts."""
        return self.successes / self.n if self.n else None

    def __str__(self) -> str:
        rate = "n/a" if self.rate is None else f"{self.rate:.1%}"
        return f"{self.successes}/{self.n} ({rate})"


class MetricsPartial(Protocol):
    """The fields of :class:`~agentstream.schemas.VersionMetrics` that :class:`MetricsBook` reads."""

    @property
    def resource_name(self) -> str: ...
    @property
    def resource_version(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def window_start(self) -> int: ...
    @property
    def window_end(self) -> int: ...
    @property
    def source_partition(self) -> int: ...
    @property
    def revision(self) -> int: ...
    @property
    def rollouts(self) -> int: ...
    @property
    def succeeded(self) -> int: ...


#: (resource_name, resource_version, window_start, source_partition, mode)
PartialKey = tuple[str, str, int, int, str]


class MetricsBook:
    """Per-version totals folded from ``VersionMetrics`` partials.

    A partial is identified by (resource, version, window_start, source_partition, mode) and
    re-emitted with a growing ``revision``; its current value is its highest revision, and a
    version's totals are the sum over its partials. :meth:`add` keeps only the highest revision of
    each partial, so folding is idempotent under redelivery and independent of delivery order.

    Args:
        modes: the rollout modes :meth:`stats` counts (default :data:`TRAFFIC_MODES`: ``train`` and
            ``prod``, not the pinned ``val`` / ``test`` evaluations); ``None`` counts every mode.
            Partials stored before modes were recorded have mode ``""``: only ``None`` counts them.
    """

    def __init__(self, modes: Collection[str] | None = TRAFFIC_MODES) -> None:
        self.modes = None if modes is None else frozenset(modes)
        self._partials: dict[PartialKey, MetricsPartial] = {}

    def __len__(self) -> int:
        return len(self._partials)

    def add(self, record: MetricsPartial) -> bool:
        """Fold one partial; returns whether it replaced what the book held (a newer revision).

        An older or equal revision of a partial already held is ignored.
        """
        key = (
            record.resource_name,
            str(record.resource_version),
            record.window_start,
            record.source_partition,
            record.mode,
        )
        held = self._partials.get(key)
        if held is not None and held.revision >= record.revision:
            return False
        self._partials[key] = record
        return True

    def stats(self, resource_name: str, version: str | int, since_us: int) -> ArmStats:
        """Totals of ``version`` in the counted modes over the windows from the one containing
        ``since_us`` on.

        A window counts when it ends after ``since_us`` (``window_end > since_us``), i.e. its start
        is at or after the floor of ``since_us`` to the window size. ``n`` is ``rollouts`` and
        ``successes`` is ``succeeded``.
        """
        version = str(version)
        n = successes = 0
        for (name, ver, _, _, mode), partial in self._partials.items():
            if (
                name == resource_name
                and ver == version
                and partial.window_end > since_us
                and (self.modes is None or mode in self.modes)
            ):
                n += partial.rollouts
                successes += partial.succeeded
        return ArmStats(n=n, successes=successes)

    def versions(self, resource_name: str) -> list[str]:
        """The versions of ``resource_name`` with partials, numerically sorted where numeric."""
        found = {key[1] for key in self._partials if key[0] == resource_name}
        return sorted(found, key=lambda v: (0, int(v), v) if v.isdigit() else (1, 0, v))


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision of :class:`PromotionPolicy` with its evidence.

    ``difference`` is the raw candidate-minus-production success rate (``None`` while an arm has
    no rollouts). ``statistic`` and ``p_value`` are those of the test behind the action: the
    rollback direction for a rollback on evidence, otherwise the promote direction (so a hold or a
    ``max_samples`` rollback reports how far the candidate was from promotion); both are ``None``
    while an arm is below ``min_samples`` (no test is run). For the mSPRT ``statistic`` is
    ``log Lambda`` and ``p_value`` is ``min(1, 1 / Lambda)`` (1 when the difference lies on the
    other side of the margin); for the z-test they are ``z`` and ``1 - Phi(z)``.
    """

    action: Action
    difference: float | None
    statistic: float | None
    p_value: float | None
    reason: str
    test: str = TEST_NAME


@dataclass(frozen=True, slots=True)
class PromotionPolicy:
    """When to promote or roll back a candidate; see the module docstring for the tests.

    ``margin``: the candidate must beat production by more than this (success-rate points as a
    fraction, 0.02 = two points); ``alpha``: the significance level (over the whole experiment for
    the mSPRT, per look for the z-test); ``min_samples``: rollouts each arm needs before any
    promote or rollback; ``max_samples``: candidate rollouts after which an inconclusive experiment
    ends with rollback (production is kept), ``None`` for never; ``rollback_margin``: roll back
    when the candidate is significantly worse than production by more than this; ``test``:
    ``"msprt"`` (sequential, always valid) or ``"z"`` (per look only); ``tau``: the mSPRT's mixing
    spread, the size of difference it detects quickest.
    """

    margin: float = 0.0
    alpha: float = 0.05
    min_samples: int = 30
    max_samples: int | None = None
    rollback_margin: float = 0.0
    test: TestKind = "msprt"
    tau: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not (-1.0 < self.margin < 1.0 and -1.0 < self.rollback_margin < 1.0):
            raise ValueError("margin and rollback_margin must be in (-1, 1)")
        if self.margin + self.rollback_margin < 0.0:
            # Otherwise both one-sided tests could fire on the same data.
            raise ValueError("margin + rollback_margin must be >= 0")
        if self.min_samples < 0:
            raise ValueError(f"min_samples must be >= 0, got {self.min_samples}")
        if self.max_samples is not None and self.max_samples < max(self.min_samples, 1):
            raise ValueError(f"max_samples ({self.max_samples}) must be >= min_samples ({self.min_samples})")
        if self.test not in ("msprt", "z"):
            raise ValueError(f"test must be 'msprt' or 'z', got {self.test!r}")
        if not 0.0 < self.tau < 1.0:
            raise ValueError(f"tau must be in (0, 1), got {self.tau}")

    @property
    def test_name(self) -> str:
        """``PromotionDecision.test`` of this policy's test."""
        return MSPRT_TEST if self.test == "msprt" else Z_TEST

    def decide(self, candidate: ArmStats, production: ArmStats) -> Verdict:
        """Promote, hold or roll back ``candidate`` against ``production``."""
        difference = (
            candidate.rate - production.rate
            if candidate.rate is not None and production.rate is not None
            else None
        )
        arms = f"candidate {candidate} vs production {production}"
        if candidate.n < self.min_samples or production.n < self.min_samples:
            return self._verdict(
                "hold",
                difference,
                None,
                None,
                f"collecting samples: {arms}; each arm needs at least {self.min_samples} rollouts",
            )

        p_c = (candidate.successes + 1) / (candidate.n + 2)
        p_p = (production.successes + 1) / (production.n + 2)
        adjusted = p_c - p_p
        variance = p_c * (1.0 - p_c) / (candidate.n + 2) + p_p * (1.0 - p_p) / (production.n + 2)
        evidence = (
            f"{arms}, difference {_points(difference)} "
            f"(adjusted {_points(adjusted)}, SE {math.sqrt(variance):.4f})"
        )
        stat, p = self._one_sided(adjusted, variance, self.margin)
        if p < self.alpha:
            return self._verdict(
                "promote",
                difference,
                stat,
                p,
                f"candidate better by more than {_points(self.margin)}: {evidence}; "
                f"{self._show(stat, p)} < alpha {self.alpha:g}",
            )
        stat_back, p_back = self._one_sided(-adjusted, variance, self.rollback_margin)
        if p_back < self.alpha:
            return self._verdict(
                "rollback",
                difference,
                stat_back,
                p_back,
                f"candidate worse by more than {_points(self.rollback_margin)}: {evidence}; "
                f"{self._show(stat_back, p_back)} < alpha {self.alpha:g}",
            )
        if self.max_samples is not None and candidate.n >= self.max_samples:
            return self._verdict(
                "rollback",
                difference,
                stat,
                p,
                f"inconclusive after {candidate.n} candidate rollouts (max_samples {self.max_samples}), "
                f"keeping production: {evidence}; {self._show(stat, p)} >= alpha {self.alpha:g}",
            )
        return self._verdict(
            "hold",
            difference,
            stat,
            p,
            f"no significant difference yet: {evidence}; promote needs p < alpha {self.alpha:g}, "
            f"got {self._show(stat, p)} (rollback direction p = {p_back:.4g})",
        )

    def _one_sided(self, difference: float, variance: float, margin: float) -> tuple[float, float]:
        """(statistic, p) for "the true difference exceeds ``margin``" in this policy's test."""
        if self.test == "z":
            z = (difference - margin) / math.sqrt(variance)
            return z, normal_sf(z)
        log_lr = msprt_log_lr(difference, variance, margin, self.tau)
        # The mixture is symmetric: a difference on the other side of the margin is no evidence here.
        p = math.exp(-max(log_lr, 0.0)) if difference > margin else 1.0
        return log_lr, p

    def _show(self, statistic: float, p: float) -> str:
        name = "z" if self.test == "z" else "log LR"
        return f"{name} = {statistic:.3f}, p = {p:.4g}"

    def _verdict(
        self, action: Action, difference: float | None, statistic: float | None, p: float | None, reason: str
    ) -> Verdict:
        return Verdict(action, difference, statistic, p, reason, self.test_name)


def _points(value: float | None) -> str:
    """A rate difference in percentage points, signed."""
    return "n/a" if value is None else f"{value * 100:+.1f} pts"
