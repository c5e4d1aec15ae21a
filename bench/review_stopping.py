"""What the stopping rule of blind review saves, and what it costs in false verdicts: a seeded simulation.

One candidate pair, one reviewer per pair, items judged one at a time up to the test split's size. "Fixed":
the verdict is read once, after every item is judged. "Stopping": the pair stops being handed out as soon as
``compare_pair``'s 95% exact interval excludes parity (what ``services.pair_stops`` does), and that verdict
stands. Under no true difference a "better" verdict is a false positive; with a true difference, the
items judged are the reviewers' time saved. Both designs see the same simulated judgments, round by round.

    .venv/bin/python bench/review_stopping.py [--items 31] [--ties 0.3] [--runs 4000] [--rounds 3]

Prints each round and last ``fpr_stopping=X (min-max) fpr_fixed=Y (min-max)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apps.evaluations.statistics import PARITY, exact_interval  # noqa: E402  (plain functions, no Django)


def settled_table(n_max: int) -> np.ndarray:
    """settled[a, d]: a of d decisive items won and the exact interval excludes parity (compare_pair.better)."""
    table = np.zeros((n_max + 1, n_max + 1), dtype=bool)
    for d in range(1, n_max + 1):
        for a in range(d + 1):
            low, high = exact_interval(a, d)
            table[a, d] = low > PARITY or high < PARITY
    return table


def simulate(rng, settled, *, items: int, ties: float, p_first: float, runs: int) -> dict:
    outcome = rng.random((runs, items))
    decisive = outcome >= ties
    first = decisive & (rng.random((runs, items)) < p_first)
    a = np.cumsum(first, axis=1)
    d = np.cumsum(decisive, axis=1)
    hit = settled[a, d]  # after each item
    stops = hit.any(axis=1)
    stop_at = np.where(stops, hit.argmax(axis=1) + 1, items)
    return {"stopping": float(stops.mean()), "fixed": float(hit[:, -1].mean()), "items": float(stop_at.mean())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=31)
    parser.add_argument("--ties", type=float, default=0.3)
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settled = settled_table(args.items)
    null_stop, null_fixed = [], []
    for r in range(args.rounds):
        rng = np.random.default_rng(r)
        null = simulate(rng, settled, items=args.items, ties=args.ties, p_first=0.5, runs=args.runs)
        real = simulate(rng, settled, items=args.items, ties=args.ties, p_first=0.8, runs=args.runs)
        null_stop.append(null["stopping"])
        null_fixed.append(null["fixed"])
        print(f"round {r + 1}: no true difference: false 'better' {null['fixed']:.3f} fixed vs {null['stopping']:.3f} "
              f"stopping; true 80/20 split: found {real['fixed']:.3f} fixed vs {real['stopping']:.3f} stopping, "
              f"items judged {args.items} fixed vs {real['items']:.1f} stopping")

    def fmt(v):
        return f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"

    print(f"fpr_stopping={fmt(null_stop)} fpr_fixed={fmt(null_fixed)}")


if __name__ == "__main__":
    main()
