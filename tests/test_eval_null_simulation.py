"""With no true difference between two candidates, the verdict and the ranking must call one of them better
in at most 5% of evaluations, even when several reviewers judge each item and mostly agree: the item, not
the judgment, is the unit (issue: pooling judgments gave 8.6% false positives at agreement 0.85)."""

import math

import numpy as np
from scipy.stats import binomtest

from apps.evaluations import statistics as st

ITEMS, REVIEWERS, AGREEMENT, TIE_SHARE = 30, 2, 0.85, 0.2
SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5}


def null_evaluation(rng: np.random.Generator) -> dict[int, list[float]]:
    """Each item has a latent verdict (a and b equally likely); each reviewer reports it with probability
    AGREEMENT, otherwise one of the other two verdicts at random."""
    labels = ["a", "b", "tie"]
    judgments = {}
    for item in range(ITEMS):
        latent = rng.choice(labels, p=[(1 - TIE_SHARE) / 2, (1 - TIE_SHARE) / 2, TIE_SHARE])
        seen = [
            latent if rng.random() < AGREEMENT else rng.choice([x for x in labels if x != latent])
            for _ in range(REVIEWERS)
        ]
        judgments[item] = [SCORE[v] for v in seen]
    return judgments


def monte_carlo_bound(n: int, rate: float = 0.05) -> float:
    return rate + 2 * math.sqrt(rate * (1 - rate) / n)


def test_the_verdict_has_at_most_a_five_percent_false_positive_rate_under_the_null():
    rng = np.random.default_rng(20261125)
    sims = 1000
    ours = pooled = 0
    for _ in range(sims):
        judgments = null_evaluation(rng)
        ours += st.compare_pair(judgments).better is not None
        flat = [s for scores in judgments.values() for s in scores if s != 0.5]
        pooled += bool(flat) and binomtest(int(sum(flat)), len(flat)).pvalue < 0.05
    assert ours / sims <= monte_carlo_bound(sims), f"false positives: {ours / sims:.3f}"
    # the simulation can see the problem: pooling judgments as if independent exceeds the 5% bound
    assert pooled / sims > monte_carlo_bound(sims), f"pooled judgments: {pooled / sims:.3f}"


def test_the_ranking_interval_excludes_parity_at_most_five_percent_of_the_time_under_the_null():
    rng = np.random.default_rng(7)
    sims = 200
    excluded = 0
    for n in range(sims):
        outcomes = [(item, 0, 1, s) for item, scores in null_evaluation(rng).items() for s in scores]
        first = next(r for r in st.bradley_terry_ranking(outcomes, 2, bootstrap=400, seed=n) if r.index == 0)
        excluded += first.low > 1 or first.high < 1
    assert excluded / sims <= monte_carlo_bound(sims), f"ranking false positives: {excluded / sims:.3f}"
