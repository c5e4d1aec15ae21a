"""The experiment's numbers, as plain functions of plain data (no Django): nested subsets, the log-linear
trend of a score against the number of training examples, and the paired difference of two arms.

The unit of analysis is the test item, as everywhere in the Studio: every point is scored on the same test
items, so the trend's interval comes from the items' own slopes (each item's score regressed on log2 n, the
mean of those slopes is the pooled least-squares slope, and its t interval over items is the interval), and
the difference of two arms from the items' paired differences. One training seed per size: the intervals
say how sure the test split makes us, not how much another seed would move a run.
"""

from __future__ import annotations

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


def _t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    from scipy.stats import ttest_1samp

    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    if len(arr) < 2:
        return -math.inf, math.inf
    if np.allclose(arr, mean):
        return mean, mean
    ci = ttest_1samp(arr, 0.0).confidence_interval(confidence)
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Trend:
    intercept: float  # fitted score at n = 1 (log2 n = 0)
    slope: float  # score per doubling of the training examples
    low: float  # 95% interval of the slope over test items
    high: float
    items: int  # test items scored at every size

    def at(self, n: float) -> float:
        return self.intercept + self.slope * math.log2(n)

    @property
    def helps(self) -> bool:
        """More data is expected to raise the score: the interval excludes 0 and the slope is not negligible."""
        return self.low > 0 and self.slope >= SMALL_SLOPE


def fit_trend(sizes: Sequence[int], item_scores: Mapping[object, Sequence[float]]) -> Trend | None:
    """score ~ a + b·log2(n), fitted on the items scored at every size (``item_scores[item][k]`` is the score at
    ``sizes[k]``). None with fewer than two distinct sizes or no complete item."""
    from scipy.stats import linregress

    x = np.log2(np.asarray(sizes, dtype=float))
    rows = [list(v) for v in item_scores.values() if len(v) == len(sizes) and all(s is not None for s in v)]
    if len(set(sizes)) < 2 or not rows:
        return None
    means = np.mean(np.asarray(rows, dtype=float), axis=0)
    fit = linregress(x, means)  # the slope of the means is the mean of the items' slopes (same x for every item)
    slopes = [linregress(x, row).slope for row in rows]
    low, high = _t_interval(slopes)
    return Trend(float(fit.intercept), float(fit.slope), low, high, len(rows))


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
    low, high = _t_interval(diffs)
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
    return f"{value * 100:+.1f} points"


def trend_sentence(metric: str, trend: Trend | None, largest: int) -> str:
    """The plain sentence under the chart, from the same numbers as the printed slope and interval."""
    if trend is None:
        return f"Not enough scored sizes yet to fit a trend of {metric}."
    interval = (
        f"{pts(trend.slope)} per doubling, 95 % CI {pts(trend.low)} to {pts(trend.high)}, {trend.items} test items"
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
    interval = f"{pts(diff.mean)}, 95 % CI {pts(diff.low)} to {pts(diff.high)}, {diff.items} test items"
    head = (
        f"On {metric}, {second_label} scores {pct(diff.second)} against {pct(diff.first)} "
        f"for {first_label} ({interval})"
    )
    if diff.low > 0:
        return f"{head}: {second_label} is better."
    if diff.high < 0:
        return f"{head}: {first_label} is better."
    return f"{head}: no clear difference."
