"""The A/B promotion policy: fold per-version metric partials, then decide promote, hold or rollback.

Runners split traffic between the ``production`` and ``candidate`` labels of a resource; the
stream workers emit :class:`~agentstream.schemas.VersionMetrics` *partials* (see
:mod:`agentstream.streams.metrics`). :class:`MetricsBook` folds those partials into per-version
totals, and :class:`PromotionPolicy` compares the candidate's success rate with production's.

The statistical test (:data:`TEST_NAME`) is a **one-sided two-proportion z-test on the success
rate, with the Agresti-Caffo adjustment**: one success and one failure are added to each arm
before the rates and the unpooled standard error are computed,

    p_c = (x_c + 1) / (n_c + 2),    p_p = (x_p + 1) / (n_p + 2),    d = p_c - p_p,
    SE  = sqrt(p_c (1 - p_c) / (n_c + 2) + p_p (1 - p_p) / (n_p + 2)),

so arms at 0% or 100% with few samples still get a sensible, non-zero standard error (the plain
Wald test would declare a 5/5 arm infinitely better than a 4/5 one). Two one-sided tests are run:

* **promote** when ``z = (d - margin) / SE`` has ``p = 1 - Phi(z) < alpha``: the candidate beats
  production by more than ``margin`` (success-rate points, as a fraction);
* **rollback** when ``z' = (-d - rollback_margin) / SE`` has ``p' = 1 - Phi(z') < alpha``: the
  candidate is worse than production by more than ``rollback_margin``;
* **hold** otherwise, and always while either arm has fewer than ``min_samples`` rollouts. Once
  the candidate has ``max_samples`` rollouts without a decision the experiment ends inconclusive
  and production is kept (rollback).

``Phi`` is the standard normal CDF, computed with :func:`math.erfc`. The test re-runs on growing
data (a sequential look on every decision), so the per-look error rate is ``alpha``; the overall
false-promotion rate of an experiment that is checked many times is higher. Use ``max_samples``
and a sparse decision cadence to keep the number of looks small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "TEST_NAME",
    "Action",
    "ArmStats",
    "MetricsBook",
    "MetricsPartial",
    "PromotionPolicy",
    "Verdict",
    "normal_sf",
]

#: What :class:`PromotionPolicy` computes (``PromotionDecision.test``).
TEST_NAME = "one-sided two-proportion z-test, Agresti-Caffo adjusted"

#: What a decision does with the candidate.
Action = Literal["promote", "hold", "rollback"]

_SQRT2 = math.sqrt(2.0)


def normal_sf(z: float) -> float:
    """``1 - Phi(z)`` for the standard normal, accurate in the upper tail."""
    return 0.5 * math.erfc(z / _SQRT2)


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


#: (resource_name, resource_version, window_start, source_partition)
PartialKey = tuple[str, str, int, int]


class MetricsBook:
    """Per-version totals folded from ``VersionMetrics`` partials.

    A partial is identified by (resource, version, window_start, source_partition) and re-emitted
    with a growing ``revision``; its current value is its highest revision, and a version's totals
    are the sum over its partials. :meth:`add` keeps only the highest revision of each partial, so
    folding is idempotent under redelivery and independent of delivery order.
    """

    def __init__(self) -> None:
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
        )
        held = self._partials.get(key)
        if held is not None and held.revision >= record.revision:
            return False
        self._partials[key] = record
        return True

    def stats(self, resource_name: str, version: str | int, since_us: int) -> ArmStats:
        """Totals of ``version`` over the windows from the one containing ``since_us`` on.

        A window counts when it ends after ``since_us`` (``window_end > since_us``), i.e. its start
        is at or after the floor of ``since_us`` to the window size. ``n`` is ``rollouts`` and
        ``successes`` is ``succeeded``.
        """
        version = str(version)
        n = successes = 0
        for (name, ver, _, _), partial in self._partials.items():
            if name == resource_name and ver == version and partial.window_end > since_us:
                n += partial.rollouts
                successes += partial.succeeded
        return ArmStats(n=n, successes=successes)

    def versions(self, resource_name: str) -> list[str]:
        """The versions of ``resource_name`` with partials, numerically sorted where numeric."""
        found = {ver for name, ver, _, _ in self._partials if name == resource_name}
        return sorted(found, key=lambda v: (0, int(v), v) if v.isdigit() else (1, 0, v))


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision of :class:`PromotionPolicy` with its evidence.

    ``difference`` is the raw candidate-minus-production success rate (``None`` while an arm has
    no rollouts). ``statistic`` and ``p_value`` are those of the one-sided test behind the action:
    the rollback direction for a rollback on evidence, otherwise the promote direction (so a hold
    or a ``max_samples`` rollback reports how far the candidate was from promotion); both are
    ``None`` while an arm is below ``min_samples`` (no test is run).
    """

    action: Action
    difference: float | None
    statistic: float | None
    p_value: float | None
    reason: str
    test: str = TEST_NAME


@dataclass(frozen=True, slots=True)
class PromotionPolicy:
    """When to promote or roll back a candidate; see the module docstring for the test.

    ``margin``: the candidate must beat production by more than this (success-rate points as a
    fraction, 0.02 = two points); ``alpha``: the one-sided significance level of each test;
    ``min_samples``: rollouts each arm needs before any promote or rollback; ``max_samples``:
    candidate rollouts after which an inconclusive experiment ends with rollback (production is
    kept), ``None`` for never; ``rollback_margin``: roll back when the candidate is significantly
    worse than production by more than this.
    """

    margin: float = 0.0
    alpha: float = 0.05
    min_samples: int = 30
    max_samples: int | None = None
    rollback_margin: float = 0.0

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

    def decide(self, candidate: ArmStats, production: ArmStats) -> Verdict:
        """Promote, hold or roll back ``candidate`` against ``production``."""
        difference = (
            candidate.rate - production.rate
            if candidate.rate is not None and production.rate is not None
            else None
        )
        arms = f"candidate {candidate} vs production {production}"
        if candidate.n < self.min_samples or production.n < self.min_samples:
            return Verdict(
                "hold",
                difference,
                None,
                None,
                f"collecting samples: {arms}; each arm needs at least {self.min_samples} rollouts",
            )

        p_c = (candidate.successes + 1) / (candidate.n + 2)
        p_p = (production.successes + 1) / (production.n + 2)
        adjusted = p_c - p_p
        se = math.sqrt(p_c * (1.0 - p_c) / (candidate.n + 2) + p_p * (1.0 - p_p) / (production.n + 2))
        z = (adjusted - self.margin) / se
        p = normal_sf(z)
        evidence = f"{arms}, difference {_points(difference)} (adjusted {_points(adjusted)}, SE {se:.4f})"

        if p < self.alpha:
            return Verdict(
                "promote",
                difference,
                z,
                p,
                f"candidate better by more than {_points(self.margin)}: {evidence}; "
                f"z = {z:.3f}, p = {p:.4g} < alpha {self.alpha:g}",
            )
        z_back = (-adjusted - self.rollback_margin) / se
        p_back = normal_sf(z_back)
        if p_back < self.alpha:
            return Verdict(
                "rollback",
                difference,
                z_back,
                p_back,
                f"candidate worse by more than {_points(self.rollback_margin)}: {evidence}; "
                f"z = {z_back:.3f}, p = {p_back:.4g} < alpha {self.alpha:g}",
            )
        if self.max_samples is not None and candidate.n >= self.max_samples:
            return Verdict(
                "rollback",
                difference,
                z,
                p,
                f"inconclusive after {candidate.n} candidate rollouts (max_samples {self.max_samples}), "
                f"keeping production: {evidence}; z = {z:.3f}, p = {p:.4g} >= alpha {self.alpha:g}",
            )
        return Verdict(
            "hold",
            difference,
            z,
            p,
            f"no significant difference yet: {evidence}; promote needs p < alpha {self.alpha:g}, "
            f"got z = {z:.3f}, p = {p:.4g} (rollback direction p = {p_back:.4g})",
        )


def _points(value: float | None) -> str:
    """A rate difference in percentage points, signed."""
    return "n/a" if value is None else f"{value * 100:+.1f} pts"
