"""Statistics for evaluation results: plain functions on plain data (no ORM), tested against hand-computed
values and the reference libraries.

* Win rates: the share of judgments a candidate won, ties counted in the denominator and reported on
  their own; 95% Wilson score intervals (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``).
  Significance of a difference: two-sided sign test on the decisive (non-tie) judgments.
* Bradley-Terry: maximum likelihood strengths by Hunter's (2004) MM algorithm, a tie counting half a
  win for each side; intervals from a seeded bootstrap over judgments.
* Per-criterion scores: mean with a 95% t interval (``scipy.stats.t``); pass/fail criteria are 0/1, so
  their mean is the pass rate.
* Agreement: Cohen's kappa (``sklearn.metrics.cohen_kappa_score``) when exactly two reviewers judged the
  same pairs, Krippendorff's alpha (``krippendorff.alpha``, nominal) for more.
* Similarity to the ideal output: token F1, the harmonic mean of token precision and recall over
  lower-cased word tokens (the SQuAD answer metric): 1.0 for the same words, 0.0 for no word in common.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class WinRate:
    wins: int
    losses: int
    ties: int
    rate: float  # wins / all judgments (ties included in the denominator)
    low: float
    high: float
    p_value: float  # sign test on decisive judgments, two-sided

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def tie_rate(self) -> float:
        return self.ties / self.n if self.n else 0.0

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    from scipy.stats import binomtest

    if n == 0:
        return 0.0, 1.0
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def win_rate(wins: int, losses: int, ties: int) -> WinRate:
    from scipy.stats import binomtest

    n = wins + losses + ties
    low, high = wilson_interval(wins, n)
    decisive = wins + losses
    p = float(binomtest(wins, decisive, 0.5).pvalue) if decisive else 1.0
    return WinRate(wins, losses, ties, wins / n if n else 0.0, low, high, p)


def judgments_needed(wins: int, losses: int, ties: int, z: float = Z95) -> int | None:
    """About how many more judgments would make the observed preference significant at 95%.

    With p = wins / (wins + losses) the decisive share and t the tie share, a normal-approximation
    sign test is significant once ``n_decisive >= z^2 p (1 - p) / (p - 0.5)^2``; total judgments are
    ``n_decisive / (1 - t)``. None when there is no preference to confirm (p = 0.5, or no decisive
    judgments yet). 0 when already significant.
    """
    decisive = wins + losses
    n = decisive + ties
    if decisive == 0 or wins == losses:
        return None
    p = wins / decisive
    p = min(max(p, 0.5 / decisive), 1 - 0.5 / decisive)  # keep the variance positive at 0% / 100%
    needed_decisive = z * z * p * (1 - p) / (p - 0.5) ** 2
    tie_share = ties / n
    needed_total = math.ceil(needed_decisive / (1 - tie_share)) if tie_share < 1 else None
    if needed_total is None:
        return None
    return max(0, needed_total - n)


# --- Bradley-Terry ------------------------------------------------------------------------------------
def bradley_terry(wins: np.ndarray, *, prior: float = 0.0, iterations: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """Strengths ``p`` (geometric mean 1) with P(i beats j) = p_i / (p_i + p_j), by the MM algorithm.

    ``wins[i, j]`` is how often i beat j (ties added as 0.5 to both cells by the caller). ``prior`` adds
    that many virtual wins each way to every pair that met, which keeps the fit finite when a candidate
    won (or lost) every comparison.
    """
    w = np.asarray(wins, dtype=float).copy()
    k = w.shape[0]
    met = (w + w.T) > 0
    w = w + prior * met
    n = w + w.T
    total_wins = w.sum(axis=1)
    p = np.ones(k)
    for _ in range(iterations):
        denom = (n / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(denom > 0, total_wins / np.where(denom > 0, denom, 1), p)
        new = np.maximum(new, 1e-12)
        new = new / math.exp(np.log(new).mean())
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            p = new
            break
        p = new
    return p


@dataclass(frozen=True)
class Ranking:
    index: int
    strength: float  # exp(log-strength), geometric mean of all candidates = 1
    low: float
    high: float
    win_prob_vs_average: float  # p / (p + 1)


def bradley_terry_ranking(outcomes: Sequence[tuple[int, int, float]], k: int, *, bootstrap: int = 200,
                          seed: int = 0, prior: float = 0.1) -> list[Ranking]:
    """Rank ``k`` candidates from outcomes ``(i, j, score_i)`` (1 win, 0 loss, 0.5 tie), best first,
    with 95% percentile bootstrap intervals (judgments resampled with replacement)."""
    def table(rows) -> np.ndarray:
        w = np.zeros((k, k))
        for i, j, s in rows:
            w[i, j] += s
            w[j, i] += 1 - s
        return w

    rows = list(outcomes)
    fit = bradley_terry(table(rows), prior=prior)
    samples = []
    if rows and bootstrap:
        rng = np.random.default_rng(seed)
        arr = np.array(rows, dtype=float)
        for _ in range(bootstrap):
            pick = arr[rng.integers(0, len(arr), len(arr))]
            samples.append(np.log(bradley_terry(table((int(a), int(b), s) for a, b, s in pick), prior=prior, iterations=1000, tol=1e-6)))
    logs = np.array(samples) if samples else np.log(fit)[None, :]
    lows, highs = np.percentile(logs, 2.5, axis=0), np.percentile(logs, 97.5, axis=0)
    ranked = [Ranking(i, float(fit[i]), float(math.exp(lows[i])), float(math.exp(highs[i])), float(fit[i] / (fit[i] + 1)))
              for i in range(k)]
    return sorted(ranked, key=lambda r: -r.strength)


# --- scores and agreement -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MeanInterval:
    mean: float
    low: float
    high: float
    n: int


def mean_interval(values: Sequence[float]) -> MeanInterval | None:
    from scipy import stats

    if not values:
        return None
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    if len(arr) < 2 or float(arr.std(ddof=1)) == 0.0:
        return MeanInterval(mean, mean, mean, len(arr))
    low, high = stats.t.interval(0.95, len(arr) - 1, loc=mean, scale=stats.sem(arr))
    return MeanInterval(mean, float(low), float(high), len(arr))


@dataclass(frozen=True)
class Agreement:
    method: str  # "Cohen's kappa" | "Krippendorff's alpha" | ""
    value: float | None
    items: int  # pairs judged by two or more reviewers
    reviewers: int
    note: str = ""


def agreement(labels: dict[object, dict[object, str]]) -> Agreement:
    """Agreement on the winner. ``labels[item][reviewer]`` is a label such as "1", "2" or "tie"."""
    shared = {item: by for item, by in labels.items() if len(by) >= 2}
    reviewers = sorted({r for by in shared.values() for r in by}, key=str)
    if not shared:
        return Agreement("", None, 0, 0, "No pair has two judgments yet.")
    categories = sorted({v for by in shared.values() for v in by.values()})
    if len(categories) == 1:
        return Agreement("", 1.0, len(shared), len(reviewers), "Every reviewer gave every shared pair the same verdict.")
    if len(reviewers) == 2:
        from sklearn.metrics import cohen_kappa_score

        a, b = reviewers
        both = [by for by in shared.values() if a in by and b in by]
        value = float(cohen_kappa_score([by[a] for by in both], [by[b] for by in both]))
        return Agreement("Cohen's kappa", None if math.isnan(value) else value, len(both), 2)
    import krippendorff

    code = {c: n for n, c in enumerate(categories)}
    items = list(shared)
    matrix = np.full((len(reviewers), len(items)), np.nan)
    for col, item in enumerate(items):
        for row, reviewer in enumerate(reviewers):
            if reviewer in shared[item]:
                matrix[row, col] = code[shared[item][reviewer]]
    value = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))
    return Agreement("Krippendorff's alpha", None if math.isnan(value) else value, len(items), len(reviewers))


def describe_agreement(value: float | None) -> str:
    """Landis & Koch's words for a kappa-like value."""
    if value is None:
        return "not defined"
    for limit, word in ((0.0, "poor"), (0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial")):
        if value <= limit:
            return word
    return "almost perfect"


_TOKEN = re.compile(r"\w+", re.UNICODE)


def token_f1(output: str, ideal: str) -> float:
    """Token-overlap F1 between an output and the ideal output (lower-cased word tokens, multiset overlap)."""
    a, b = _TOKEN.findall(output.lower()), _TOKEN.findall(ideal.lower())
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)
