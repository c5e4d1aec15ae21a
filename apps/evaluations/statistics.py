"""Statistics for evaluation results: plain functions on plain data (no ORM), tested against hand-computed
values, the reference libraries and simulated null data.

The unit of analysis is the **item** (one test example), not the judgment: two reviewers judging the same
pair are not two independent pieces of evidence, so every test and every bootstrap below clusters by item.

* Head to head (:func:`compare_pair`): each item goes to the candidate its judgments favoured (the mean of
  1 for a win, 0 for a loss, 1/2 for a tie, over the reviewers who judged it); items whose judgments
  balance out are tied. The quantity reported is the **share of decisive items** won, with a 95%
  Clopper-Pearson interval (``scipy.stats.binomtest(...).proportion_ci(method="exact")``). A candidate is
  called better only when that interval excludes 50%; that is exactly the two-sided exact sign test on the
  decisive items at 5% (the interval is the inversion of that test), so the sentence and the interval can
  never disagree.
* How many more items would settle a lead (:func:`items_needed`): the smallest number of decisive items
  at which the same exact test would reject parity if the observed split held, scaled up by the tie share.
* Bradley-Terry: maximum likelihood strengths by Hunter's (2004) MM algorithm, a tie counting half a
  win for each side; intervals from a seeded bootstrap that resamples items (all judgments of an item
  together).
* Per-criterion scores and similarity: averaged per output first (reviewers and comparisons of one output
  pooled into one number), then a mean over outputs with a 95% Wilson score interval on the score rescaled
  to 0-1 (:func:`bounded_mean_interval`): exact Wilson for pass/fail rates, conservative for 1-5 means,
  and never zero-width for n = 1 or equal values.
* Agreement: Cohen's kappa (``sklearn.metrics.cohen_kappa_score``) when exactly two reviewers judged the
  same pairs, Krippendorff's alpha (``krippendorff.alpha``, nominal) for more; undefined (not 1.0) when
  every reviewer gave the same verdict, since chance agreement is then total; raw agreement always.
* Similarity to the ideal output: token F1, the harmonic mean of token precision and recall over
  lower-cased word tokens (the SQuAD answer metric): 1.0 for the same words, 0.0 for no word in common.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from worker.checks import token_f1  # noqa: F401  (the similarity figure; the rubric's checks and graders share it)

Z95 = 1.959963984540054
PARITY = 0.5


# --- head to head, item by item -----------------------------------------------------------------------
@functools.lru_cache(maxsize=8192)
def exact_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval for a binomial share; (0, 1) when there is nothing to go on. From the beta
    quantiles (the same interval ``binomtest(...).proportion_ci(method="exact")`` finds by root search, a
    hundred times faster), and remembered: counts repeat."""
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    tail = (1 - confidence) / 2
    low = float(beta.ppf(tail, successes, n - successes + 1)) if successes > 0 else 0.0
    high = float(beta.ppf(1 - tail, successes + 1, n - successes)) if successes < n else 1.0
    return low, high


@functools.lru_cache(maxsize=8192)
def sign_test_p(successes: int, n: int) -> float:
    """The exact two-sided sign test of a share against parity (1.0 with nothing to go on)."""
    from scipy.stats import binomtest

    return float(binomtest(successes, n, PARITY).pvalue) if n else 1.0


@dataclass(frozen=True)
class PairOutcome:
    """Candidate a against candidate b, counted in items."""

    items_a: int  # items whose judgments favoured a
    items_b: int  # items whose judgments favoured b
    items_tied: int  # items judged, but favouring neither
    judgments: int
    low: float  # 95% Clopper-Pearson interval of `share`
    high: float
    p_value: float  # exact two-sided sign test on the decisive items (the test the interval inverts)

    @property
    def decisive(self) -> int:
        return self.items_a + self.items_b

    @property
    def items(self) -> int:
        return self.decisive + self.items_tied

    @property
    def share(self) -> float | None:
        """The share of decisive items that a won; None before any item was decided."""
        return self.items_a / self.decisive if self.decisive else None

    @property
    def better(self) -> str | None:
        """ "a" or "b" when the interval excludes parity, else None."""
        if self.low > PARITY:
            return "a"
        if self.high < PARITY:
            return "b"
        return None

    @property
    def interval_text(self) -> str:
        """The interval as printed ("7-49.9%"): see :func:`percent_interval`."""
        return percent_interval(self.low, self.high)

    def flipped(self) -> PairOutcome:
        return PairOutcome(
            self.items_b, self.items_a, self.items_tied, self.judgments, 1 - self.high, 1 - self.low, self.p_value
        )


def percent_interval(low: float, high: float) -> str:
    """An interval of a share in whole percents, rounded outward (the printed interval holds the computed one),
    with as many decimals as it takes for a bound on one side of 50% not to print as 50% (so "better" is never
    printed next to an interval that seems to reach parity: 0.4987 is "49.9", not "50")."""

    def bound(value: float, outward) -> str:
        for decimals in range(5):
            scale = 10**decimals
            shown = outward(round(value * 100 * scale, 9)) / scale  # round(.., 9): no float dust moves a bound
            if value == PARITY or (shown != 50) or decimals == 4:
                return f"{shown:.{decimals}f}"
        raise AssertionError  # pragma: no cover

    return f"{bound(low, math.floor)}-{bound(high, math.ceil)}%"


def item_side(scores: Sequence[float]) -> str:
    """Where one item's judgments point: "a", "b" or "tie" (scores are 1 win, 0 loss, 0.5 tie for a)."""
    mean = sum(scores) / len(scores)
    if math.isclose(mean, PARITY):
        return "tie"
    return "a" if mean > PARITY else "b"


def compare_pair(item_scores: Mapping[Hashable, Sequence[float]]) -> PairOutcome:
    """Head to head of a against b from ``{item: [score for a of each judgment of that item]}``."""
    sides = Counter(item_side(scores) for scores in item_scores.values() if scores)
    a, b, tied = sides["a"], sides["b"], sides["tie"]
    low, high = exact_interval(a, a + b)
    return PairOutcome(a, b, tied, sum(len(s) for s in item_scores.values()), low, high, sign_test_p(a, a + b))


def settled_early(outcome: PairOutcome, looks: int, alpha: float = 0.05) -> bool:
    """Whether review of a pair may stop before all its items are judged.

    Looking after every judged item and stopping at the first 95% interval that excludes parity would call a
    pair with no true difference "better" 11% of the time on 31 items and 20% on 93. So stopping early asks
    for the exact interval at confidence ``1 - alpha / looks`` (``looks``: the items the pair can have) to
    exclude parity: by the union bound, a pair with no true difference stops early at most ``alpha`` of the
    time, and the 95% verdict read afterwards excludes parity as well (bench/review_stopping.py: 3-4% false
    "better" for the whole design, against 5% with no stopping).
    """
    if outcome.decisive == 0:
        return False
    low, high = exact_interval(outcome.items_a, outcome.decisive, confidence=1 - alpha / max(1, looks))
    return low > PARITY or high < PARITY


def items_needed(items_a: int, items_b: int, items_tied: int, *, limit: int = 100_000) -> int | None:
    """About how many more judged items would make the observed lead significant, if the split held.

    From the same exact test as the verdict: the smallest count of decisive items n at which
    ``round(share * n)`` wins reject parity, turned into items with the observed tie share. 0 when already
    settled; None when there is no lead to confirm (no decisive item, or an even split).
    """
    from scipy.stats import binom

    decisive = items_a + items_b
    total = decisive + items_tied
    if decisive == 0 or items_a == items_b:
        return None
    lead = max(items_a, items_b)
    low, high = exact_interval(lead, decisive)
    if low > PARITY:
        return 0
    share = lead / decisive
    n = np.arange(decisive + 1, limit + 1)
    k = np.rint(share * n)
    # two-sided exact sign test at parity: p = 2 P(X >= k), X ~ Bin(n, 1/2), for the leading side
    significant = 2 * binom.sf(k - 1, n, PARITY) < 0.05
    if not significant.any():
        return None
    needed_decisive = int(n[np.argmax(significant)])
    return max(0, math.ceil(needed_decisive * total / decisive) - total)


# --- Bradley-Terry ------------------------------------------------------------------------------------
def bradley_terry(wins: np.ndarray, *, prior: float = 0.0, iterations: int = 200, tol: float = 1e-10) -> np.ndarray:
    """Strengths ``p`` (geometric mean 1) with P(i beats j) = p_i / (p_i + p_j): the maximum likelihood fit by
    Newton's method on the log-strengths, with step halving, run to convergence (a few dozen steps where the
    MM algorithm needs thousands, so a bootstrap refit is as converged as the fit it is compared with).

    ``wins[i, j]`` is how often i beat j (ties added as 0.5 to both cells by the caller). ``prior`` adds
    that many virtual wins each way to every pair that met, which keeps the fit finite when a candidate
    won (or lost) every comparison. A candidate that met nobody keeps strength 1.
    """
    w = np.asarray(wins, dtype=float).copy()
    k = w.shape[0]
    met = (w + w.T) > 0
    w = w + prior * met
    n = w + w.T
    total_wins = w.sum(axis=1)

    if k == 2 and w[0, 1] > 0 and w[1, 0] > 0:  # two candidates: the odds of the head to head, exactly
        half = 0.5 * math.log(w[0, 1] / w[1, 0])
        return np.exp(np.array([half, -half]))

    def loglik(theta: np.ndarray) -> float:
        diff = theta[:, None] - theta[None, :]
        return float((w * (diff - np.logaddexp(0.0, diff))).sum())

    # candidates linked by comparisons form groups; the likelihood does not see a shift of a group's
    # log-strengths, so each Newton system gets the group's averaging matrix added: the step then keeps every
    # group's mean where it starts (0) and the system is never singular
    group = list(range(k))
    if not (met | np.eye(k, dtype=bool)).all():  # every pair met: one group (the usual case, no search)
        for i, j in zip(*np.nonzero(met), strict=True):
            gi, gj = group[i], group[j]
            if gi != gj:
                group = [gi if g == gj else g for g in group]
    else:
        group = [0] * k
    labels = np.array(group)
    averaging = (labels[:, None] == labels[None, :]) / np.bincount(labels, minlength=k)[labels][None, :]
    theta = np.zeros(k)
    current = loglik(theta)
    for _ in range(iterations):
        prob = 1.0 / (1.0 + np.exp(theta[None, :] - theta[:, None]))  # P(i beats j)
        gradient = total_wins - (n * prob).sum(axis=1)
        weight = n * prob * prob.T
        hessian = np.diag(weight.sum(axis=1)) - weight
        step = np.linalg.solve(hessian + averaging, gradient)
        size = 1.0
        while size > 1e-6:
            candidate = np.clip(theta + size * step, -40.0, 40.0)
            value = loglik(candidate)
            if value >= current - 1e-12:
                break
            size /= 2
        moved = np.max(np.abs(candidate - theta))
        theta, current = candidate, value
        if moved < tol:
            break
    return np.exp(theta)


@dataclass(frozen=True)
class Ranking:
    index: int
    strength: float  # exp(log-strength), geometric mean of all candidates = 1
    low: float | None  # 95% bootstrap interval, always holding ``strength``; None: no interval yet
    high: float | None
    win_prob_vs_average: float  # p / (p + 1)


def bradley_terry_ranking(
    outcomes: Sequence[tuple[Hashable, int, int, float]],
    k: int,
    *,
    bootstrap: int = 400,
    seed: int = 0,
    prior: float = 0.1,
) -> list[Ranking]:
    """Rank ``k`` candidates from judgments ``(item, i, j, score_i)`` (1 win, 0 loss, 0.5 tie), best first,
    with 95% percentile bootstrap intervals that resample items: an item's judgments stay together.

    Every refit runs to the same convergence as the fit. An interval is widened to hold its own estimate if
    the percentiles miss it, and there is none (``low`` and ``high`` None) where resampling cannot move the
    strength: a single judged item, or every resample giving the same value (all ties, say)."""
    by_item: dict[Hashable, np.ndarray] = {}
    for item, i, j, s in outcomes:
        by_item.setdefault(item, np.zeros((k, k)))
        by_item[item][i, j] += s
        by_item[item][j, i] += 1 - s
    tables = np.array(list(by_item.values())) if by_item else np.zeros((0, k, k))
    fit = bradley_terry(tables.sum(axis=0), prior=prior)
    bounds: list[tuple[float | None, float | None]] = [(None, None)] * k
    if len(tables) > 1 and bootstrap:
        rng = np.random.default_rng(seed)
        logs = np.array(
            [
                np.log(bradley_terry(tables[rng.integers(0, len(tables), len(tables))].sum(axis=0), prior=prior))
                for _ in range(bootstrap)
            ]
        )
        lows, highs = np.percentile(logs, 2.5, axis=0), np.percentile(logs, 97.5, axis=0)
        point = np.log(fit)
        lows, highs = np.minimum(lows, point), np.maximum(highs, point)
        bounds = [
            (float(math.exp(lo)), float(math.exp(hi))) if hi - lo > 1e-6 else (None, None)
            for lo, hi in zip(lows, highs, strict=True)
        ]
    ranked = [Ranking(i, float(fit[i]), *bounds[i], float(fit[i] / (fit[i] + 1))) for i in range(k)]
    return sorted(ranked, key=lambda r: -r.strength)


# --- scores and agreement -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MeanInterval:
    mean: float
    low: float
    high: float
    n: int


def bounded_mean_interval(
    values: Sequence[float], lowest: float, highest: float, confidence: float = 0.95
) -> MeanInterval | None:
    """Mean of values on a bounded scale with a Wilson score interval on the mean rescaled to 0-1.

    For pass/fail values this is the Wilson interval of the pass rate; for a 1-5 scale it is conservative
    (no distribution on [0, 1] has a larger variance than a 0/1 one of the same mean). Unlike a t interval
    it is not zero-width at n = 1 or when every value is the same. None when there are no values.
    """
    from scipy.stats import norm

    if not values:
        return None
    span = highest - lowest
    n = len(values)
    mean = float(np.mean(values))
    p = (mean - lowest) / span if span else 1.0
    z = float(norm.ppf(0.5 + confidence / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return MeanInterval(mean, lowest + span * low, lowest + span * high, n)


@dataclass(frozen=True)
class Agreement:
    method: str  # "Cohen's kappa" | "Krippendorff's alpha" | ""
    value: float | None  # None when undefined
    items: int  # pairs judged by two or more reviewers
    reviewers: int
    observed: float | None = None  # share of those pairs on which every reviewer gave the same verdict
    note: str = ""


def agreement(labels: dict[object, dict[object, str]]) -> Agreement:
    """Agreement on the winner. ``labels[item][reviewer]`` is a label such as "first", "second" or "tie"."""
    shared = {item: by for item, by in labels.items() if len(by) >= 2}
    reviewers = sorted({r for by in shared.values() for r in by}, key=str)
    if not shared:
        return Agreement("", None, 0, 0, None, "No pair has two judgments yet.")
    observed = sum(len(set(by.values())) == 1 for by in shared.values()) / len(shared)
    categories = sorted({v for by in shared.values() for v in by.values()})
    if len(categories) == 1:
        return Agreement(
            "",
            None,
            len(shared),
            len(reviewers),
            observed,
            f"Not defined: every reviewer gave every shared pair the same verdict ({categories[0]}), so "
            "agreement beyond chance cannot be measured.",
        )
    if len(reviewers) == 2:
        from sklearn.metrics import cohen_kappa_score

        a, b = reviewers
        both = [by for by in shared.values() if a in by and b in by]
        value = float(cohen_kappa_score([by[a] for by in both], [by[b] for by in both]))
        return Agreement("Cohen's kappa", None if math.isnan(value) else value, len(both), 2, observed)
    import krippendorff

    code = {c: n for n, c in enumerate(categories)}
    items = list(shared)
    matrix = np.full((len(reviewers), len(items)), np.nan)
    for col, item in enumerate(items):
        for row, reviewer in enumerate(reviewers):
            if reviewer in shared[item]:
                matrix[row, col] = code[shared[item][reviewer]]
    value = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))
    return Agreement("Krippendorff's alpha", None if math.isnan(value) else value, len(items), len(reviewers), observed)


def describe_agreement(value: float | None) -> str:
    """Landis & Koch's words for a kappa-like value."""
    if value is None:
        return "not defined"
    for limit, word in ((0.0, "poor"), (0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial")):
        if value <= limit:
            return word
    return "almost perfect"


# --- automatic graders against people -----------------------------------------------------------------
PAIR_LABELS = ("first", "tie", "second")  # a pair's verdict from its first candidate's side


def kappa_from_confusion(table: np.ndarray) -> float | None:
    """Cohen's kappa from a square confusion table (rows: people, columns: the grader); None when chance
    agreement is total (every verdict in one category on both sides), where kappa is not defined."""
    n = table.sum()
    if n == 0:
        return None
    observed = np.trace(table) / n
    expected = float((table.sum(axis=1) * table.sum(axis=0)).sum()) / (n * n)
    if math.isclose(expected, 1.0):
        return None
    return float((observed - expected) / (1 - expected))


@dataclass(frozen=True)
class Calibration:
    """How often an automatic grader gives the verdict reviewers gave, over the pairs reviewers judged."""

    pairs: int  # comparisons with a human verdict and a grader verdict
    items: int  # distinct items among them (the bootstrap's unit)
    agreement: float | None  # share of pairs with the same verdict, ties included
    agreement_without_ties: float | None  # among pairs where both people and grader picked a side
    decided_by_both: int
    kappa: float | None
    kappa_low: float | None  # 95% percentile bootstrap interval, resampling items
    kappa_high: float | None
    confusion: tuple[tuple[int, ...], ...]  # rows: people's verdict, columns: grader's (PAIR_LABELS order)


def calibrate(rows: Sequence[tuple[Hashable, str, str]], *, bootstrap: int = 1000, seed: int = 0) -> Calibration:
    """Agreement of a grader with people from ``(item, human verdict, grader verdict)`` per judged pair
    (verdicts from PAIR_LABELS; the human verdict is the item-level one of :func:`item_side`). Kappa's
    interval resamples items with all their pairs, like every other interval on the results page."""
    code = {label: i for i, label in enumerate(PAIR_LABELS)}
    k = len(PAIR_LABELS)
    by_item: dict[Hashable, np.ndarray] = {}
    for item, human, grader in rows:
        by_item.setdefault(item, np.zeros((k, k), dtype=int))
        by_item[item][code[human], code[grader]] += 1
    tables = np.array(list(by_item.values())) if by_item else np.zeros((0, k, k), dtype=int)
    table = tables.sum(axis=0) if len(tables) else np.zeros((k, k), dtype=int)
    n = int(table.sum())
    sides = [code["first"], code["second"]]
    decided = table[np.ix_(sides, sides)]
    kappa = kappa_from_confusion(table)
    low = high = None
    if kappa is not None and bootstrap and len(tables) > 1:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(bootstrap):
            value = kappa_from_confusion(tables[rng.integers(0, len(tables), len(tables))].sum(axis=0))
            if value is not None:
                samples.append(value)
        if samples:
            low, high = float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))
    return Calibration(
        pairs=n,
        items=len(tables),
        agreement=float(np.trace(table) / n) if n else None,
        agreement_without_ties=float(np.trace(decided) / decided.sum()) if decided.sum() else None,
        decided_by_both=int(decided.sum()),
        kappa=kappa,
        kappa_low=low,
        kappa_high=high,
        confusion=tuple(tuple(int(v) for v in row) for row in table),
    )


def check_verdict(first_passed: bool, second_passed: bool) -> str:
    """A check's pair preference: the output that passes beats the one that fails, else a tie."""
    if first_passed == second_passed:
        return "tie"
    return "first" if first_passed else "second"
