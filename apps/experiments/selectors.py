"""Reads of data experiments: the list, and one experiment's table, chart and sentences, computed from its
points' evaluations each time they are shown (nothing is copied onto the experiment)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from apps.evaluations.models import AutoCheck, CheckResult, EvaluationStatus, Generation
from apps.evaluations.statistics import MeanInterval, bounded_mean_interval

from . import statistics
from .models import Arm, Experiment, Point

METRICS = {
    "checks": "the share of replies passing every automatic check",
    "similarity": "similarity to the ideal reply",
}
SHORT = {"checks": "all checks pass", "similarity": "similarity"}


def experiments_for(project):
    return (
        Experiment.objects.filter(project=project)
        .select_related("base_model", "test_version")
        .prefetch_related("arms__source_version")
    )


def experiment_for(project, pk: int) -> Experiment | None:
    return (
        Experiment.objects.filter(project=project, pk=pk)
        .select_related("base_model", "rubric", "test_version", "created_by")
        .first()
    )


def item_scores(point: Point) -> dict[str, dict[int, float]]:
    """Per metric, each test item's score (keyed by its rank in the shared test split) for a scored point."""
    evaluation = point.evaluation
    if evaluation is None or evaluation.status != EvaluationStatus.READY:
        return {}
    ranks = {
        pk: rank
        for rank, pk in enumerate(
            point.version.items.filter(split="test").order_by("position").values_list("pk", flat=True)
        )
    }
    generations = list(
        Generation.objects.filter(candidate__evaluation=evaluation).values_list("pk", "item_id", "similarity")
    )
    scores: dict[str, dict[int, float]] = {"similarity": {ranks[i]: s for _, i, s in generations if i in ranks}}
    if AutoCheck.objects.filter(criterion__rubric=evaluation.rubric_id).exists() and point.checks_done:
        failed = set(
            CheckResult.objects.filter(generation__candidate__evaluation=evaluation, passed=False).values_list(
                "generation_id", flat=True
            )
        )
        scores["checks"] = {ranks[i]: float(g not in failed) for g, i, _ in generations if i in ranks}
    return scores


@dataclass
class PointRow:
    point: Point
    scores: dict[str, dict[int, float]]
    means: dict[str, MeanInterval | None] = field(default_factory=dict)
    cells: list[MeanInterval | None] = field(default_factory=list)  # the means in the result's metric order


@dataclass
class ArmResult:
    arm: Arm
    rows: list[PointRow]
    trends: dict[str, statistics.Trend | None]
    sentences: dict[str, str]


@dataclass
class Result:
    experiment: Experiment
    metrics: list[str]
    arms: list[ArmResult]
    differences: dict[str, statistics.Difference | None]
    verdicts: dict[str, str]
    charts: dict[str, dict]
    test_items: int

    @property
    def panels(self) -> list[dict]:
        """One card per metric: its chart, each arm's trend sentence and the verdict (two arms)."""
        return [
            {
                "metric": m,
                "title": SHORT[m],
                "chart": self.charts[m],
                "sentences": [(a.arm.label if len(self.arms) > 1 else "", a.sentences[m]) for a in self.arms],
                "verdict": self.verdicts.get(m),
            }
            for m in self.metrics
        ]

    @property
    def headers(self) -> list[str]:
        return [SHORT[m] for m in self.metrics]

    @property
    def primary(self) -> str:
        return self.metrics[0]

    @property
    def slope(self) -> float | None:
        """The first arm's slope on the primary metric (the CLI's last line)."""
        trend = self.arms[0].trends.get(self.primary) if self.arms else None
        return trend.slope if trend else None


def experiment_result(experiment: Experiment) -> Result:
    has_checks = AutoCheck.objects.filter(criterion__rubric=experiment.rubric_id).exists()
    metrics = ["checks", "similarity"] if has_checks else ["similarity"]
    points = list(
        Point.objects.filter(arm__experiment=experiment)
        .select_related("arm", "run", "evaluation", "version")
        .order_by("arm__position", "n_train")
    )
    by_arm: dict[int, list[Point]] = defaultdict(list)
    for p in points:
        by_arm[p.arm_id].append(p)
    arms = []
    for arm in experiment.arms.select_related("source_version").order_by("position"):
        rows = [PointRow(p, item_scores(p)) for p in by_arm[arm.pk]]
        trends, sentences = {}, {}
        for metric in metrics:
            for row in rows:
                values = list(row.scores.get(metric, {}).values())
                row.means[metric] = bounded_mean_interval(values, 0.0, 1.0) if values else None
            scored = [r for r in rows if r.scores.get(metric)]
            items = set.intersection(*(set(r.scores[metric]) for r in scored)) if scored else set()
            trends[metric] = statistics.fit_trend(
                [r.point.n_train for r in scored], {i: [r.scores[metric][i] for r in scored] for i in items}
            )
            largest = max((r.point.n_train for r in scored), default=0)
            sentences[metric] = statistics.trend_sentence(METRICS[metric], trends[metric], largest)
        for row in rows:
            row.cells = [row.means.get(m) for m in metrics]
        arms.append(ArmResult(arm, rows, trends, sentences))
    differences, verdicts = {}, {}
    if len(arms) == 2:
        for metric in metrics:
            last = [next((r for r in reversed(a.rows) if r.scores.get(metric)), None) for a in arms]
            if None in last or last[0].point.fraction != last[1].point.fraction:
                differences[metric] = None
                verdicts[metric] = "Waiting for both arms' largest subsets to be scored."
                continue
            differences[metric] = statistics.paired_difference(last[0].scores[metric], last[1].scores[metric])
            first = f"{arms[0].arm.label} ({last[0].point.n_train} examples)"
            second = f"{arms[1].arm.label} ({last[1].point.n_train} examples)"
            verdicts[metric] = statistics.difference_sentence(METRICS[metric], first, second, differences[metric])
    test_items = experiment.test_version.items.filter(split="test").count()
    return Result(experiment, metrics, arms, differences, verdicts, {m: chart(arms, m) for m in metrics}, test_items)


CHART_W, CHART_H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 280, 48, 16, 16, 36
COLOURS = ("#2563eb", "#dc2626")


def chart(arms: list[ArmResult], metric: str) -> dict:
    """An SVG of score (0-100 %) against training examples on a log2 axis: each point with its 95 % interval,
    each arm's fitted trend as a dashed line."""
    sizes = sorted({r.point.n_train for a in arms for r in a.rows})
    if not sizes:
        return {"empty": True}
    lo, hi = math.log2(sizes[0]), math.log2(sizes[-1])
    span = (hi - lo) or 1.0

    def x(n: float) -> float:
        return round(PAD_L + (math.log2(n) - lo) / span * (CHART_W - PAD_L - PAD_R), 1)

    def y(v: float) -> float:
        return round(PAD_T + (1 - min(1.0, max(0.0, v))) * (CHART_H - PAD_T - PAD_B), 1)

    series = []
    for index, a in enumerate(arms):
        marks = [
            {
                "x": x(r.point.n_train),
                "y": y(m.mean),
                "low": y(m.low),
                "high": y(m.high),
                "n": r.point.n_train,
                "label": f"{r.point.n_train} examples: {m.mean * 100:.0f} % "
                f"(95 % CI {m.low * 100:.0f}-{m.high * 100:.0f} %)",
            }
            for r in a.rows
            if (m := r.means.get(metric))
        ]
        trend = a.trends.get(metric)
        line = None
        if trend is not None:
            line = {"x1": x(sizes[0]), "y1": y(trend.at(sizes[0])), "x2": x(sizes[-1]), "y2": y(trend.at(sizes[-1]))}
        series.append({"label": a.arm.label, "colour": COLOURS[index % len(COLOURS)], "marks": marks, "trend": line})
    return {
        "empty": False,
        "width": CHART_W,
        "height": CHART_H,
        "series": series,
        "metric": SHORT[metric],
        "x_ticks": [{"x": x(n), "label": n} for n in sizes],
        "axis_y": CHART_H - PAD_B,
        "y_ticks": [{"y": y(v), "label": f"{v * 100:.0f} %"} for v in (0, 0.25, 0.5, 0.75, 1.0)],
        "left": PAD_L,
        "right": CHART_W - PAD_R,
    }
