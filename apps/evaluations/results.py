"""Evaluations: reads of the results: verdicts, ranking, scores, metrics; checks and the judge against reviewers."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from django.db.models import Avg, Count

from . import statistics as st
from .models import (
    AutoCheck,
    Candidate,
    CandidateKind,
    CheckResult,
    Evaluation,
    Generation,
    Judgment,
    Score,
)
from .selectors import eval_items, first_score


@dataclass
class PairResult:
    """Candidate a against candidate b (a is listed first in the evaluation), counted in items."""

    a: Candidate
    b: Candidate
    outcome: st.PairOutcome  # from a's side
    needed: int | None  # more judged items that would settle a lead, if the split held (0: settled)
    unjudged: int  # items of this pair nobody has judged yet
    bar: dict = field(default_factory=dict)  # chart geometry in a 300-unit-wide SVG

    @property
    def winner(self) -> Candidate | None:
        return {"a": self.a, "b": self.b}.get(self.outcome.better)


@dataclass
class Verdict:
    """One sentence a team can act on, with the pair and the numbers it came from."""

    sentence: str
    pair: PairResult | None
    subject: Candidate | None  # the candidate the sentence is about (a tuned run, or the leader)
    other: Candidate | None  # what it is measured against (the reference baseline, or the runner-up)
    settled: bool


@dataclass
class Results:
    evaluation: Evaluation
    candidates: list[Candidate]
    judgment_count: int
    item_count: int
    pairs: list[PairResult]
    ranking: list[dict]
    criteria: list[dict]
    agreement: st.Agreement
    agreement_words: str
    metrics: list[dict]
    verdicts: list[Verdict]
    reference: str = ""  # how the baseline the tuned runs are measured against was chosen


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def verdict_sentence(subject: Candidate, other: Candidate, pair: PairResult) -> tuple[str, bool]:
    """The verdict on ``subject`` against ``other``: "better" only when the interval printed beside it
    excludes 50%; the share and the interval are one quantity (decisive items won); n is always stated."""
    o = pair.outcome if pair.a.pk == subject.pk else pair.outcome.flipped()
    counts = f"{_plural(o.items, 'item')} judged, {_plural(o.judgments, 'judgment')}"
    if o.items == 0:
        return f"{subject.label} vs {other.label}: no judgments yet.", False
    if o.decisive == 0:
        return (
            f"{subject.label} and {other.label} are level: reviewers preferred neither on any item ({counts}).",
            False,
        )
    ties = f"; {_plural(o.items_tied, 'item')} tied" if o.items_tied else ""
    stats = (
        f"{subject.label} was preferred on {o.items_a} of {_plural(o.decisive, 'item')} where reviewers picked a "
        f"side ({_pct(o.share)}, 95% CI {o.interval_text}){ties}; {counts}"
    )
    if o.better == "a":
        return f"{subject.label} is better than {other.label}: {stats}.", True
    if o.better == "b":
        return f"{other.label} is better than {subject.label}: {stats}.", True
    if pair.needed is None:
        more = ""
    elif pair.needed <= pair.unjudged:
        more = f" About {_plural(pair.needed, 'more judged item')} would settle it if the split held."
    else:
        more = (
            f" Settling it at this split would take about {_plural(pair.needed, 'more judged item')}, more than the "
            f"{pair.unjudged} left unjudged: add test examples or accept that the difference is small."
        )
    return (
        f"No clear difference yet between {subject.label} and {other.label}: {stats}; the interval includes 50%.{more}"
    ), False


def evaluation_results(evaluation: Evaluation, *, bootstrap: int = 400) -> Results:
    candidates = list(evaluation.candidates.select_related("run").order_by("position"))
    index = {c.pk: n for n, c in enumerate(candidates)}
    judgments = list(
        Judgment.objects.filter(evaluation=evaluation).values_list(
            "comparison_id",
            "comparison__item_id",
            "comparison__candidate_1_id",
            "comparison__candidate_2_id",
            "winner_id",
            "reviewer_id",
        )
    )
    scores: dict[tuple[int, int], dict[int, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )  # (c1, c2) -> item -> [score of c1]
    outcomes = []
    labels: dict[int, dict[int, str]] = defaultdict(dict)
    for comparison_id, item_id, c1, c2, winner, reviewer in judgments:
        s = first_score(winner, c1)
        scores[(c1, c2)][item_id].append(s)
        outcomes.append((item_id, index[c1], index[c2], s))
        labels[comparison_id][reviewer] = {0.5: "tie", 1.0: "first", 0.0: "second"}[s]
    item_count = eval_items(evaluation).count()

    pairs = []
    for i, a in enumerate(candidates):
        for b in candidates[i + 1 :]:
            o = st.compare_pair(scores.get((a.pk, b.pk), {}))
            pairs.append(
                PairResult(
                    a,
                    b,
                    o,
                    st.items_needed(o.items_a, o.items_b, o.items_tied),
                    unjudged=max(0, item_count - o.items),
                    bar=_bar(o),
                )
            )

    ranking_rows = (
        st.bradley_terry_ranking(outcomes, len(candidates), bootstrap=bootstrap, seed=evaluation.seed)
        if candidates
        else []
    )
    agreement = st.agreement(labels)
    verdicts = _verdicts(pairs, ranking_rows, candidates) if judgments else []
    baselines = [c for c in candidates if c.kind != CandidateKind.RUN]
    return Results(
        evaluation=evaluation,
        candidates=candidates,
        judgment_count=len(judgments),
        item_count=item_count,
        pairs=pairs,
        ranking=_ranking_chart(ranking_rows, candidates),
        criteria=_criteria(evaluation, candidates),
        agreement=agreement,
        agreement_words=st.describe_agreement(agreement.value),
        metrics=_metrics(evaluation, candidates),
        verdicts=verdicts,
        reference=reference_baseline(pairs, baselines)[1]
        if verdicts and baselines and len(baselines) < len(candidates)
        else "",
    )


def _bar(o: st.PairOutcome, width: float = 300.0) -> dict:
    """The decisive items split between a (left) and b (right), with the interval of a's share under it."""
    if not o.decisive:
        return {}
    a = width * o.share
    return {
        "a_w": round(a, 1),
        "b_x": round(a, 1),
        "b_w": round(width - a, 1),
        "lo": round(width * o.low, 1),
        "hi": round(width * o.high, 1),
        "mid": width / 2,
    }


def reference_baseline(pairs: list[PairResult], baselines: list[Candidate]) -> tuple[Candidate, str]:
    """The baseline each tuned run is measured against, and the sentence saying how it was chosen.

    It is chosen from the baselines' own head to head only (the base model against the prompt-only baseline:
    decided items won minus lost), never from judgments that involve a tuned run: picking the baseline that did
    best against the run from the same judgments made "the baseline is better" come up 2-3.5% of the time with
    no true difference, against under 1% for "the run is better", and lowered the chance of seeing a real gain.
    Between equals (or before the baselines have met), the prompt-only baseline: the harder one to beat."""
    ids = {c.pk for c in baselines}
    margin = {c.pk: 0 for c in baselines}
    decided = 0
    for p in pairs:
        if p.a.pk in ids and p.b.pk in ids:
            margin[p.a.pk] += p.outcome.items_a - p.outcome.items_b
            margin[p.b.pk] += p.outcome.items_b - p.outcome.items_a
            decided += p.outcome.decisive
    ordered = sorted(baselines, key=lambda c: (-margin[c.pk], c.kind != CandidateKind.PROMPT, c.position))
    chosen = ordered[0]
    if len(baselines) == 1:
        return chosen, f"Each tuned run is measured against the one baseline, {chosen.label}."
    how = (
        f"it won more of the {_plural(decided, 'decided item')} in the baselines' own head to head"
        if margin[chosen.pk] > 0
        else "the baselines' own head to head has not separated them, and the prompt-only baseline is the harder "
        "one to beat"
        if any(c.kind == CandidateKind.PROMPT for c in baselines)
        else "the baselines' own head to head has not separated them"
    )
    return chosen, (
        f"Each tuned run is measured against {chosen.label}: {how}. The tuned runs' own judgments play no part "
        "in that choice."
    )


def _verdicts(pairs: list[PairResult], ranking: list[st.Ranking], candidates: list[Candidate]) -> list[Verdict]:
    """The question the team asks: did each tuned run beat the reference baseline (chosen without the tuned
    runs' judgments, :func:`reference_baseline`)? Without a tuned run or a baseline: the leader against the
    runner-up of the Bradley-Terry fit."""
    if not ranking or len(candidates) < 2:
        return []
    runs = [c for c in candidates if c.kind == CandidateKind.RUN]
    baselines = [c for c in candidates if c.kind != CandidateKind.RUN]
    if runs and baselines:
        reference, _ = reference_baseline(pairs, baselines)
        matchups = [(run, reference) for run in runs]
    else:
        strength = {r.index: r.strength for r in ranking}
        by_rank = sorted(candidates, key=lambda c: -round(strength[candidates.index(c)], 9))
        matchups = [(by_rank[0], by_rank[1])]
    verdicts = []
    for subject, other in matchups:
        pair = next(p for p in pairs if {p.a.pk, p.b.pk} == {subject.pk, other.pk})
        sentence, settled = verdict_sentence(subject, other, pair)
        verdicts.append(Verdict(sentence, pair, subject, other, settled))
    return verdicts


def _strength_interval(low: float | None, high: float | None) -> str:
    """A strength's interval as printed: rounded outward (it holds the strength it is printed beside), with
    more decimals until its ends differ; "no interval yet" where there is none."""
    if low is None or high is None:
        return "no interval yet"
    for decimals in range(2, 7):
        scale = 10**decimals
        shown_low, shown_high = math.floor(low * scale) / scale, math.ceil(high * scale) / scale
        if shown_low < shown_high:
            break
    return f"{shown_low:.{decimals}f}-{shown_high:.{decimals}f}"


def _ranking_chart(rows: list[st.Ranking], candidates: list[Candidate]) -> list[dict]:
    """Strength on a log2 axis, mapped to x = 180..410 of a 420-unit-wide SVG (labels on the left); a strength
    without an interval is drawn as its point alone."""
    if not rows:
        return []
    logs = [math.log2(v) for r in rows for v in (r.low, r.high, r.strength) if v is not None]
    lo, hi = min(logs + [-1.0]), max(logs + [1.0])
    span = hi - lo or 1.0

    def x(v: float | None) -> float | None:
        return None if v is None else round(180 + 230 * (math.log2(v) - lo) / span, 1)

    return [
        {
            "rank": n + 1,
            "candidate": candidates[r.index],
            "strength": r.strength,
            "low": r.low,
            "high": r.high,
            "interval": _strength_interval(r.low, r.high),
            "win_prob": r.win_prob_vs_average,
            "x": x(r.strength),
            "x_low": x(r.low),
            "x_high": x(r.high),
            "x_one": x(1.0),
            "y": 24 * n + 16,
        }
        for n, r in enumerate(rows)
    ]


def _criteria(evaluation: Evaluation, candidates: list[Candidate]) -> list[dict]:
    """Each output's score on each criterion is first averaged over every judgment that scored it (reviewers
    and the comparisons it appeared in), so an output counts once; then a mean over outputs."""
    per_output: dict[tuple[int, int], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for criterion_id, candidate_id, item_id, value in Score.objects.filter(judgment__evaluation=evaluation).values_list(
        "criterion_id", "candidate_id", "judgment__comparison__item_id", "value"
    ):
        per_output[(criterion_id, candidate_id)][item_id].append(value)
    passed: dict[tuple[int, int], list[int]] = defaultdict(list)  # (check, candidate) -> 1/0 per output
    for check_id, candidate_id, ok in CheckResult.objects.filter(
        generation__candidate__evaluation=evaluation
    ).values_list("check_def_id", "generation__candidate_id", "passed"):
        passed[(check_id, candidate_id)].append(int(ok))
    rows = []
    for criterion in evaluation.rubric.criteria.prefetch_related("auto_checks"):
        bottom, top = min(criterion.values), max(criterion.values)
        cells = []
        for c in candidates:
            outputs = per_output.get((criterion.pk, c.pk), {})
            m = st.bounded_mean_interval([sum(v) / len(v) for v in outputs.values()], bottom, top)
            cells.append(
                {
                    "candidate": c,
                    "m": m,
                    "width": round(100 * m.mean / top, 1) if m else 0,
                    "low": round(100 * m.low / top, 1) if m else 0,
                    "high": round(100 * m.high / top, 1) if m else 0,
                }
            )
        checks = [
            {
                "check": check,
                "cells": [
                    {"candidate": c, "m": st.bounded_mean_interval(passed.get((check.pk, c.pk), []), 0, 1)}
                    for c in candidates
                ],
            }
            for check in criterion.auto_checks.all()
        ]
        rows.append({"criterion": criterion, "cells": cells, "top": top, "checks": checks})
    return rows


def _metrics(evaluation: Evaluation, candidates: list[Candidate]) -> list[dict]:
    sims: dict[int, list[float]] = defaultdict(list)
    for candidate_id, similarity in Generation.objects.filter(candidate__evaluation=evaluation).values_list(
        "candidate_id", "similarity"
    ):
        sims[candidate_id].append(similarity)
    stats = {
        row["candidate_id"]: row
        for row in Generation.objects.filter(candidate__evaluation=evaluation)
        .values("candidate_id")
        .annotate(tokens=Avg("output_tokens"), latency=Avg("latency_ms"), n=Count("id"))
    }
    return [
        {
            "candidate": c,
            "val_loss": c.run.final_val_loss if c.run_id else None,
            "similarity": st.bounded_mean_interval(sims.get(c.pk, []), 0.0, 1.0),
            "tokens": stats.get(c.pk, {}).get("tokens"),
            "latency": stats.get(c.pk, {}).get("latency"),
            "n": stats.get(c.pk, {}).get("n", 0),
        }
        for c in candidates
    ]


# --- automatic checks against reviewers ---------------------------------------------------------------
def check_calibrations(evaluation: Evaluation, *, bootstrap: int = 1000) -> list[dict]:
    """Each automatic check of the rubric, and all of them together (the output passing more checks wins), as
    a grader of the pairs reviewers judged: agreement with and without ties, Cohen's kappa with an item
    bootstrap interval, and the confusion table. A pair's human verdict is the item-level one used for the
    verdict (majority of its judgments, an even split a tie)."""
    human: dict[int, tuple[int, int, int, list[float]]] = {}
    for comparison_id, item_id, c1, c2, winner in Judgment.objects.filter(evaluation=evaluation).values_list(
        "comparison_id", "comparison__item_id", "comparison__candidate_1_id", "comparison__candidate_2_id", "winner_id"
    ):
        human.setdefault(comparison_id, (item_id, c1, c2, []))[3].append(first_score(winner, c1))
    passed: dict[tuple[int, int, int], bool] = {}  # (check, candidate, item) -> passed
    for check_id, candidate_id, item_id, ok in CheckResult.objects.filter(
        generation__candidate__evaluation=evaluation
    ).values_list("check_def_id", "generation__candidate_id", "generation__item_id", "passed"):
        passed[(check_id, candidate_id, item_id)] = ok
    checks = list(
        AutoCheck.objects.filter(criterion__rubric=evaluation.rubric_id)
        .select_related("criterion")
        .order_by("criterion__position", "position", "id")
    )
    side = {"a": "first", "b": "second", "tie": "tie"}

    def rows_for(verdict) -> list[tuple[int, str, str]]:
        rows = []
        for item_id, c1, c2, scores in human.values():
            judged = verdict(c1, c2, item_id)
            if judged is not None:
                rows.append((item_id, side[st.item_side(scores)], judged))
        return rows

    def one(check):
        def verdict(c1, c2, item):
            first, second = passed.get((check.pk, c1, item)), passed.get((check.pk, c2, item))
            return None if first is None or second is None else st.check_verdict(first, second)

        return verdict

    def together(c1, c2, item):
        counts = [sum(passed.get((ch.pk, c, item), False) for ch in checks) for c in (c1, c2)]
        if any((ch.pk, c, item) not in passed for ch in checks for c in (c1, c2)):
            return None
        return "tie" if counts[0] == counts[1] else "first" if counts[0] > counts[1] else "second"

    out = [
        {
            "name": f"{check.criterion.name}: {check.label}",
            "check": check,
            "calibration": st.calibrate(rows_for(one(check)), bootstrap=bootstrap, seed=evaluation.seed),
        }
        for check in checks
    ]
    if len(checks) > 1:
        out.append(
            {
                "name": "All automatic checks (the output passing more of them wins)",
                "check": None,
                "calibration": st.calibrate(rows_for(together), bootstrap=bootstrap, seed=evaluation.seed),
            }
        )
    return out


# --- the LLM judge ------------------------------------------------------------------------------------
def _human_verdicts(evaluation: Evaluation) -> dict[int, tuple[int, str]]:
    """comparison -> (item, the reviewers' item-level verdict "first" / "second" / "tie")."""
    scores: dict[int, tuple[int, int, list[float]]] = {}
    for comparison_id, item_id, c1, winner in Judgment.objects.filter(evaluation=evaluation).values_list(
        "comparison_id", "comparison__item_id", "comparison__candidate_1_id", "winner_id"
    ):
        scores.setdefault(comparison_id, (item_id, c1, []))[2].append(first_score(winner, c1))
    side = {"a": "first", "b": "second", "tie": "tie"}
    return {cid: (item, side[st.item_side(s)]) for cid, (item, _, s) in scores.items()}


@dataclass
class JudgeReport:
    settings: object  # JudgeSettings
    judged: int
    unjudged: int
    errors: list[str]
    calibration: st.Calibration
    position_consistency: float | None  # share of judged pairs where both orders picked the same
    human_pairs: int  # pairs of this rubric version judged by reviewers (the judge's overlap: calibration.pairs)
    shown: bool
    why_hidden: str
    pairs: list[PairResult]


def judge_report(evaluation: Evaluation, *, bootstrap: int = 1000) -> JudgeReport | None:
    """The judge's verdicts, its calibration against the reviewers on the pairs they judged, and its win rates,
    which are shown only when enough pairs were judged by both the reviewers and the judge (on this rubric
    version) and the kappa on those pairs is at or above the project's thresholds."""
    from .models import JudgeSettings, JudgeVerdict

    settings_row = JudgeSettings.objects.filter(project=evaluation.project_id).first()
    verdicts = list(JudgeVerdict.objects.filter(evaluation=evaluation).select_related("comparison"))
    if settings_row is None and not verdicts:
        return None
    judged = [v for v in verdicts if v.judged]
    # Calibration is the rubric's: every evaluation scored against this rubric version adds its human-judged
    # pairs and the judge's verdicts on them (an item is the evaluation's item, so the bootstrap keeps them apart).
    same_rubric = Evaluation.objects.filter(project=evaluation.project_id, rubric=evaluation.rubric_id)
    human = {cid: ((e.pk, item), people) for e in same_rubric for cid, (item, people) in _human_verdicts(e).items()}
    rows = []
    for v in JudgeVerdict.objects.filter(evaluation__in=same_rubric, judged=True, comparison__in=list(human)).values(
        "comparison_id", "winner_id", "comparison__candidate_1_id"
    ):
        c1 = v["comparison__candidate_1_id"]
        label = "tie" if v["winner_id"] is None else "first" if v["winner_id"] == c1 else "second"
        item, people = human[v["comparison_id"]]
        rows.append((item, people, label))
    calibration = st.calibrate(rows, bootstrap=bootstrap, seed=evaluation.seed)
    min_pairs = settings_row.min_human_pairs if settings_row else 30
    min_kappa = settings_row.min_kappa if settings_row else 0.6
    # the gate counts the pairs both the reviewers and the judge judged (the pairs kappa is computed on), not
    # every human-judged pair: 36 human-judged pairs with the judge's verdict on 3 of them is evidence of 3
    both = calibration.pairs
    if both < min_pairs:
        why = (
            f"the reviewers and the judge have both judged {_plural(both, 'pair')} so far on this rubric version "
            f"({len(human)} judged by reviewers); judge figures show from {min_pairs}."
        )
    elif calibration.kappa is None or calibration.kappa < min_kappa:
        shown_kappa = "not defined" if calibration.kappa is None else f"{calibration.kappa:.2f}"
        why = (
            f"the judge's kappa with the reviewers is {shown_kappa} on {_plural(both, 'pair')} both judged; judge "
            f"figures show from {min_kappa:g}."
        )
    else:
        why = ""
    candidates = list(evaluation.candidates.order_by("position"))
    scores: dict[tuple[int, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for v in judged:
        c = v.comparison
        scores[(c.candidate_1_id, c.candidate_2_id)][c.item_id].append(first_score(v.winner_id, c.candidate_1_id))
    pairs = []
    for i, a in enumerate(candidates):
        for b in candidates[i + 1 :]:
            o = st.compare_pair(scores.get((a.pk, b.pk), {}))
            pairs.append(PairResult(a, b, o, None, unjudged=0, bar=_bar(o)))
    consistent = [v.position_consistent for v in judged if v.position_consistent is not None]
    return JudgeReport(
        settings_row,
        len(judged),
        len(verdicts) - len(judged),
        sorted({v.error for v in verdicts if not v.judged and v.error})[:5],
        calibration,
        sum(consistent) / len(consistent) if consistent else None,
        len(human),
        not why,
        why,
        pairs,
    )
