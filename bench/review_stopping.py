"""What the stopping rule of blind review saves, and what it costs in false verdicts: a seeded simulation.

One candidate pair, one reviewer per pair, items judged one at a time up to the test split's size. "Fixed":
the verdict is read once, after every item is judged. "Stopping": the pair stops being handed out as soon as
``statistics.settled_early`` says so (the exact interval at 1 - 0.05/items excludes parity: what
``selectors.pair_stops`` does), and that verdict stands; otherwise it is read at the end. "Naive" shows what
stopping at the first 95% exclusion would cost. Under no true difference a "better" verdict is a false positive; with
a true difference, the
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

from apps.evaluations.statistics import PairOutcome, compare_pair, settled_early  # noqa: E402  (no Django)


def tables(n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """better[a, d]: the 95% verdict on a of d decisive items (compare_pair); stop[a, d]: the stopping rule
    of selectors.pair_stops (statistics.settled_early with n_max looks)."""
    better = np.zeros((n_max + 1, n_max + 1), dtype=bool)
    stop = np.zeros_like(better)
    for d in range(1, n_max + 1):
        for a in range(d + 1):
            outcome = compare_pair({i: [1.0 if i < a else 0.0] for i in range(d)})
            better[a, d] = outcome.better is not None
            stop[a, d] = settled_early(outcome, n_max)
    assert isinstance(outcome, PairOutcome)
    return better, stop


def simulate(rng, better, stop, *, items: int, ties: float, p_first: float, runs: int) -> dict:
    outcome = rng.random((runs, items))
    decisive = outcome >= ties
    first = decisive & (rng.random((runs, items)) < p_first)
    a = np.cumsum(first, axis=1)
    d = np.cumsum(decisive, axis=1)
    stopped = stop[a, d]  # the rule, after each item
    stops = stopped.any(axis=1)
    final = better[a[:, -1], d[:, -1]]
    stop_at = np.where(stops, stopped.argmax(axis=1) + 1, items)
    # a stopped pair's verdict is read where it stopped (and stop implies a 95% "better"); others at the end
    return {
        "stopping": float((stops | final).mean()),
        "fixed": float(final.mean()),
        "items": float(stop_at.mean()),
        "naive": float(better[a, d].any(axis=1).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=31)
    parser.add_argument("--ties", type=float, default=0.3)
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    better, stop = tables(args.items)
    null_stop, null_fixed = [], []
    for r in range(args.rounds):
        rng = np.random.default_rng(r)
        null = simulate(rng, better, stop, items=args.items, ties=args.ties, p_first=0.5, runs=args.runs)
        real = simulate(rng, better, stop, items=args.items, ties=args.ties, p_first=0.8, runs=args.runs)
        null_stop.append(null["stopping"])
        null_fixed.append(null["fixed"])
        print(
            f"round {r + 1}: no true difference: false 'better' {null['fixed']:.3f} fixed vs {null['stopping']:.3f} "
            f"stopping (a naive stop at the first 95% exclusion: {null['naive']:.3f}); true 80/20 split: found "
            f"{real['fixed']:.3f} fixed vs {real['stopping']:.3f} stopping, "
            f"items judged {args.items} fixed vs {real['items']:.1f} stopping"
        )

    def fmt(v):
        return f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"

    print(f"fpr_stopping={fmt(null_stop)} fpr_fixed={fmt(null_fixed)}")


if __name__ == "__main__":
    main()
