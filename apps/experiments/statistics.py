"""The experiment's numbers, as plain functions of plain data (no Django): nested subsets, the log-linear
trend of a score against the number of training examples, and the paired difference of two arms.

The unit of analysis is the test item, as everywhere in the Studio: every point is scored on the same test
items. One training run (one seed) stands behind each point, and a run's own luck moves every item of its
point together, which the items' spread cannot see: with one or two points of run-to-run noise an interval
from the items alone covered the true slope 88 % / 76 % of the time and said "more data helps" of no true
slope 5 % / 12 % of the time. So the trend's interval is the wider of two: the items' own slopes (each item's
score regressed on log2 n; their mean is the pooled slope) and the regression of the sizes' mean scores on
log2 n, whose residual scatter is the run-to-run noise measured in the experiment itself (plus any bend in
the curve), with sizes - 2 degrees of freedom. It needs three sizes; with two there is no interval. Training
every size several times would measure the same noise directly, at several times the training cost; this
reads it from the runs already paid for. The difference of two arms comes from the items' paired differences.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SMALL_SLOPE = 0.01  # per doubling: under one point of a 0-1 score, "more data of this kind is unlikely to help"


def subset_size(fraction: float, total: int) -> int:
    """Examples in a fraction of ``total`` (rounded half up, so 12.5 % of 20 is 3, never 0 when any fraction is
    asked)."""
    return max(1, math.floor(fraction * total + 0.5)) if total else 0


def nested_subsets(
    examples: Sequence[tuple[int, str]], fractions: Sequence[float], seed: int
) -> dict[float, list[int]]:
    """Each fraction's subset of ``examples`` ((position, content hash) pairs), as positions: prefixes of one
    seeded permutation, so each subset holds every smaller one. The permutation orders examples by a seeded hash
    of their content, so two versions that share examples (curated and raw) draw the shared ones in the same
    order: at each size the arms differ by what the versions differ by, not by the luck of the draw."""
    seen: dict[str, int] = {}
    keyed = []
    for position, content in examples:
        seen[content] = seen.get(content, 0) + 1  # a repeated example gets its own key
        digest = hashlib.sha256(f"{seed}:{content}:{seen[content]}".encode()).hexdigest()
        keyed.append((digest, position))
    order = [position for _, position in sorted(keyed)]
    return {f: sorted(order[: subset_size(f, len(order))]) for f in fractions}


@functools.lru_cache(maxsize=256)
def _t_quantile(df: int, confidence: float = 0.95) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def _t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """The t interval of a mean; None where it has no width to give (fewer than two values, or all equal)."""
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean()) if len(arr) else 0.0
    if len(arr) < 2 or np.allclose(arr, mean):
        return None
    half = _t_quantile(len(arr) - 1, confidence) * float(arr.std(ddof=1)) / math.sqrt(len(arr))
    return mean - half, mean + half


RUNS_PER_POINT = 1  # training runs (seeds) behind each point of a curve


@dataclass(frozen=True)
class Trend:
    intercept: float  # fitted score at n = 1 (log2 n = 0)
    slope: float  # score per doubling of the training examples
    low: float | None  # 95% interval of the slope (module docstring); None: no interval (``why_no_interval``)
    high: float | None
    items: int  # test items scored at every size
    sizes: int = 2
    runs_per_point: int = RUNS_PER_POINT

    def at(self, n: float) -> float:
        return self.intercept + self.slope * math.log2(n)

    @property
    def helps(self) -> bool:
        """More data is expected to raise the score: the interval excludes 0 and the slope is not negligible."""
        return self.low is not None and self.low > 0 and self.slope >= SMALL_SLOPE

    @property
    def why_no_interval(self) -> str:
        if self.low is not None:
            return ""
        if self.sizes < 3:
            return "with two sizes a run's own luck cannot be told from the trend, a third size would tell them apart"
        return "every size scored the same on every test item"


def fit_trend(sizes: Sequence[int], item_scores: Mapping[object, Sequence[float]]) -> Trend | None:
    """score ~ a + b·log2(n), fitted on the items scored at every size (``item_scores[item][k]`` is the score at
    ``sizes[k]``), with the interval of the module docstring. None with fewer than two distinct sizes or no
    complete item."""
    rows = [list(v) for v in item_scores.values() if len(v) == len(sizes) and all(s is not None for s in v)]
    if len(set(sizes)) < 2 or not rows:
        return None
    x = np.log2(np.asarray(sizes, dtype=float))
    centred = x - x.mean()
    sxx = float(centred @ centred)
    scores = np.asarray(rows, dtype=float)
    means = scores.mean(axis=0)
    slope = float(means @ centred / sxx)  # the slope of the means is the mean of the items' slopes
    intercept = float(means.mean() - slope * x.mean())
    intervals = []
    by_items = _t_interval(scores @ centred / sxx)
    if by_items is not None:
        intervals.append(by_items)
    if len(sizes) >= 3:
        residuals = means - (intercept + slope * x)
        spread = math.sqrt(float(residuals @ residuals) / (len(sizes) - 2) / sxx)
        if spread > 1e-12:
            half = _t_quantile(len(sizes) - 2) * spread
            intervals.append((slope - half, slope + half))
    low = min((lo for lo, _ in intervals), default=None)
    high = max((hi for _, hi in intervals), default=None)
    if low is not None and high - low < 1e-9:
        low = high = None
    if len(sizes) < 3:  # no measure of run-to-run noise: the items' interval alone would claim too much
        low = high = None
    return Trend(intercept, slope, low, high, len(rows), len(sizes))


@dataclass(frozen=True)
class Difference:
    mean: float  # second arm minus first, averaged over paired items
    low: float
    high: float
    items: int
    first: float  # each arm's mean over the paired items
    second: float


def paired_difference(first: Mapping[object, float], second: Mapping[object, float]) -> Difference | None:
    """Second minus first over the items both scored, with a 95% t interval over items; None without common items."""
    common = [k for k in first if k in second and first[k] is not None and second[k] is not None]
    if not common:
        return None
    diffs = [second[k] - first[k] for k in common]
    interval = _t_interval(diffs)
    if interval is None:  # one item, or every item moved by the same amount: a t interval has no width to give
        from apps.evaluations.statistics import bounded_mean_interval

        bounded = bounded_mean_interval(diffs, -1.0, 1.0)
        interval = (bounded.low, bounded.high)
    low, high = interval
    return Difference(
        float(np.mean(diffs)),
        low,
        high,
        len(common),
        float(np.mean([first[k] for k in common])),
        float(np.mean([second[k] for k in common])),
    )


def pct(value: float) -> str:
    return f"{value * 100:.0f} %"


def pts(value: float) -> str:
    return f"{round(value * 100, 1) + 0.0:+.1f} points"  # + 0.0: no "-0.0" for a slope of -1e-16


def pts_interval(low: float, high: float) -> str:
    """An interval in points, rounded outward, with more decimals until its ends differ: never "+0.0 points to
    +0.0 points" for an interval that has width."""
    for decimals in range(1, 6):
        scale = 10**decimals
        shown_low, shown_high = math.floor(low * 100 * scale) / scale, math.ceil(high * 100 * scale) / scale
        if shown_low < shown_high:
            break
    return f"{shown_low:+.{decimals}f} points to {shown_high:+.{decimals}f} points"


def runs_behind(trend: Trend) -> str:
    n = trend.runs_per_point
    return f"{'one training run' if n == 1 else f'{n} training runs'} behind each point"


def trend_sentence(metric: str, trend: Trend | None, largest: int) -> str:
    """The plain sentence under the chart, from the same numbers as the printed slope and interval; it says
    how many runs stand behind each point, and never prints an interval of no width."""
    if trend is None:
        return f"Not enough scored sizes yet to fit a trend of {metric}."
    if trend.low is None:
        return (
            f"More data of this kind is not shown to help {metric} ({pts(trend.slope)} per doubling, no interval: "
            f"{trend.why_no_interval}; {trend.items} test items, {runs_behind(trend)})."
        )
    interval = (
        f"{pts(trend.slope)} per doubling, 95 % CI {pts_interval(trend.low, trend.high)}, {trend.items} test items, "
        f"{runs_behind(trend)}"
    )
    if trend.helps:
        now, then = (min(1.0, max(0.0, trend.at(n))) for n in (largest, 2 * largest))
        return (
            f"Doubling the data from {largest} to {2 * largest} examples is expected to raise {metric} "
            f"from {pct(now)} to {pct(then)} ({interval})."
        )
    if trend.high < 0:
        return (
            f"More data of this kind lowered {metric} ({interval}): look at the data's quality before "
            "adding more of it."
        )
    if trend.high < SMALL_SLOPE:
        return f"More data of this kind is unlikely to help {metric} ({interval})."
    return (
        f"More data of this kind is not shown to help {metric} ({interval}): the interval includes no gain, "
        "so a larger test split or more sizes would settle it."
    )


def difference_sentence(metric: str, first_label: str, second_label: str, diff: Difference | None) -> str:
    """The curated-vs-raw verdict: "better" only when the interval excludes 0; n always stated."""
    if diff is None:
        return f"No test item was scored in both {first_label} and {second_label} yet."
    items = f"{diff.items} test item{'s' * (diff.items != 1)}"
    interval = f"{pts(diff.mean)}, 95 % CI {pts_interval(diff.low, diff.high)}, {items}, one training run per arm"
    head = (
        f"On {metric}, {second_label} scores {pct(diff.second)} against {pct(diff.first)} "
        f"for {first_label} ({interval})"
    )
    if diff.low > 0:
        return f"{head}: {second_label} is better."
    if diff.high < 0:
        return f"{head}: {first_label} is better."
    return f"{head}: no clear difference."
