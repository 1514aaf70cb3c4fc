"""False promotions, power and samples to a decision of the promotion tests, over whole simulated
A/B experiments run the way the controller runs them (see ``tests/ab_simulation.py``).

    python benchmarks/ab_false_promotions.py [--runs 2000] [--look-every 4] [--json FILE]

Each design (the default mSPRT at a few ``tau``, and the per-look z-test) gets the demo's policy
(``min_samples`` 30, ``max_samples`` 150): rollouts go 50/50 to the arms and the policy looks every
``--look-every`` rollouts (about 2 per arm, the demo's 2 s cadence) until it promotes or rolls back.
Prints one JSON object: per design and pair of true rates (candidate vs production), the promote
rate with its Wilson 99% bounds, the rollback-on-evidence rate, and the candidate's median rollouts
when the experiment ended (150+ means it ran to max_samples). A/A pairs measure false promotions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.ab_simulation, from the repo root

from agentstream.streams.promotion_policy import PromotionPolicy  # noqa: E402
from tests.ab_simulation import simulate, wilson_bounds  # noqa: E402

#: (candidate, production) true success rates: two A/A pairs, then real gains of 20 to 40 points
PAIRS = [(0.5, 0.5), (0.8, 0.8), (0.2, 0.2), (0.7, 0.5), (0.5, 0.3), (0.8, 0.5), (0.6, 0.2), (0.9, 0.3)]
DESIGNS = {
    "msprt tau=0.1": PromotionPolicy(min_samples=30, max_samples=150, tau=0.1),
    "msprt tau=0.2 (default)": PromotionPolicy(min_samples=30, max_samples=150),
    "msprt tau=0.3": PromotionPolicy(min_samples=30, max_samples=150, tau=0.3),
    "z (per look)": PromotionPolicy(min_samples=30, max_samples=150, test="z"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="experiments per design and pair")
    parser.add_argument("--look-every", type=int, default=4, help="rollouts (both arms) between looks")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for design, policy in DESIGNS.items():
        rows = figures.setdefault(design, {})
        for p_c, p_p in PAIRS:
            f = simulate(policy, p_c, p_p, runs=args.runs, seed=args.seed, look_every=args.look_every)
            low, high = wilson_bounds(f.promoted, f.runs)
            rows[f"{p_c:.1f} vs {p_p:.1f}"] = {
                "promote_rate": round(f.promote_rate, 4),
                "promote_rate_99_low": round(low, 4),
                "promote_rate_99_high": round(high, 4),
                "rollback_on_evidence_rate": round(f.rolled_back_on_evidence / f.runs, 4),
                "median_candidate_rollouts": f.median_candidate_rollouts,
            }
    result = {
        "runs": args.runs,
        "look_every": args.look_every,
        "min_samples": 30,
        "max_samples": 150,
        "alpha": 0.05,
        "seconds": round(time.perf_counter() - started, 1),
        "designs": figures,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
