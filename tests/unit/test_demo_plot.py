"""The demo's plot: bands that hold their rate at 0% and 100%, and a PNG from a run's batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentstream.examples.demo_results import Phase, plot_demo, wilson


@pytest.mark.parametrize(("successes", "n"), [(0, 200), (200, 200), (0, 17), (30, 34), (0, 0)])
def test_the_wilson_band_holds_the_rate(successes: int, n: int) -> None:
    low, high = wilson(successes, n)
    rate = successes / n if n else 0.0
    assert 0.0 <= low <= rate <= high <= 1.0


def test_the_plot_draws_every_batch_including_all_and_none_succeeding(tmp_path: Path) -> None:
    phases = [
        Phase("seed traffic", "traffic", "1", 200, 0, 60.0),
        Phase("APO round 1", "val", "2", 60, 60, 120.0),
        Phase("A/B round 1", "traffic", "2", 23, 21, 200.0),
        Phase("test", "test", "2", 100, 83, 300.0),
    ]
    path = plot_demo(
        phases, {"billing": 0.0, "account": 0.0}, {"billing": 1.0, "account": 0.61}, tmp_path / "p.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
