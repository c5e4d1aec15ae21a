"""Reads for evaluation pages: results (aggregated by ``statistics``), reviewer progress, side-by-side rows.

Everything a chart needs is computed here as numbers (the templates draw inline SVG from them)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db.models import Avg, Count, Q

from . import statistics as st
from .models import Assignment, Candidate, CandidateKind, Comparison, Evaluation, Generation, Judgment, Score
from .services import eval_items, remaining_for, reviewer_ids


@dataclass
class PairResult:
    a: Candidate
    b: Candidate
    result: st.WinRate  # from a's side
    b_rate: float
    b_low: float
    b_high: float
    needed: int | None
    bar: dict = field(default_factory=dict)  # chart geometry in a 300-unit-wide SVG


@dataclass
class Results:
    evaluation: Evaluation
    candidates: list[Candidate]
    judgment_count: int
    pairs: list[PairResult]
    ranking: list[dict]
    criteria: list[dict]
    agreement: st.Agreement
    agreement_words: str
    metrics: list[dict]
    verdict: str
    headline: PairResult | None
    chart: dict = field(default_factory=dict)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _verdict(pair: PairResult | None, judgment_count: int) -> str:
    if pair is None or pair.result.n == 0:
        return f"No judgments yet ({judgment_count} so far): the verdict appears once reviewers have judged pairs."
    r = pair.result
    leader, other, rate, low, high = (pair.a, pair.b, r.rate, r.low, r.high)
    if r.losses > r.wins:
        leader, other, rate, low, high = pair.b, pair.a, pair.b_rate, pair.b_low, pair.b_high
    ties = f", {r.ties} tie{'s' if r.ties != 1 else ''}" if r.ties else ""
    stats = f"(95% CI {100 * low:.0f}-{100 * high:.0f}%, {r.n} judgment{'s' if r.n != 1 else ''}{ties})"
    if r.wins == r.losses:
        return f"{pair.a.label} and {pair.b.label} are level: each wins {_pct(r.rate)} of comparisons {stats}."
    if r.significant:
        return f"{leader.label} beats {other.label} in {_pct(rate)} of comparisons {stats}."
    more = f"; about {pair.needed} more judgments would settle it" if pair.needed else ""
    return (f"{leader.label} leads {other.label}, winning {_pct(rate)} of comparisons {stats}, but the difference "
            f"is not significant yet (sign test p = {r.p_value:.2f}){more}.")


def evaluation_results(evaluation: Evaluation, *, bootstrap: int = 200) -> Results:
    candidates = list(evaluation.candidates.select_related("run").order_by("position"))
    index = {c.pk: n for n, c in enumerate(candidates)}
    judgments = list(Judgment.objects.filter(evaluation=evaluation)
                     .values_list("comparison_id", "comparison__candidate_1_id", "comparison__candidate_2_id",
                                  "winner_id", "reviewer_id"))
    tallies: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0, 0])  # (c1, c2) -> wins1, wins2, ties
    outcomes = []
    labels: dict[int, dict[int, str]] = defaultdict(dict)
    for comparison_id, c1, c2, winner, reviewer in judgments:
        t = tallies[(c1, c2)]
        if winner is None:
            t[2] += 1
            outcomes.append((index[c1], index[c2], 0.5))
            labels[comparison_id][reviewer] = "tie"
        else:
            first = winner == c1
            t[0 if first else 1] += 1
            outcomes.append((index[c1], index[c2], 1.0 if first else 0.0))
            labels[comparison_id][reviewer] = "first" if first else "second"

    pairs = []
    for i, a in enumerate(candidates):
        for b in candidates[i + 1:]:
            w1, w2, ties = tallies.get((a.pk, b.pk), [0, 0, 0])
            r = st.win_rate(w1, w2, ties)
            b_low, b_high = st.wilson_interval(w2, r.n)
            pairs.append(PairResult(a, b, r, w2 / r.n if r.n else 0.0, b_low, b_high, st.judgments_needed(w1, w2, ties),
                                    bar=_bar(w1, w2, ties, r)))

    ranking_rows = st.bradley_terry_ranking(outcomes, len(candidates), bootstrap=bootstrap, seed=evaluation.seed) if candidates else []
    ranking = _ranking_chart(ranking_rows, candidates)
    headline = _headline(pairs, ranking_rows, candidates)
    if headline is not None:
        headline.needed = st.judgments_needed(headline.result.wins, headline.result.losses, headline.result.ties)
    agreement = st.agreement(labels)
    return Results(
        evaluation=evaluation, candidates=candidates, judgment_count=len(judgments), pairs=pairs, ranking=ranking,
        criteria=_criteria(evaluation, candidates), agreement=agreement,
        agreement_words=st.describe_agreement(agreement.value), metrics=_metrics(evaluation, candidates),
        verdict=_verdict(headline, len(judgments)), headline=headline,
    )


def _bar(w1: int, w2: int, ties: int, r: st.WinRate, width: float = 300.0) -> dict:
    n = (w1 + w2 + ties) or 1
    a, t = width * w1 / n, width * ties / n
    return {"a_w": round(a, 1), "tie_x": round(a, 1), "tie_w": round(t, 1), "b_x": round(a + t, 1),
            "b_w": round(width - a - t, 1) if w1 + w2 + ties else 0, "lo": round(width * r.low, 1),
            "hi": round(width * r.high, 1), "mid": width / 2}


def _headline(pairs: list[PairResult], ranking: list[st.Ranking], candidates: list[Candidate]) -> PairResult | None:
    """The comparison the product exists for: the best candidate against the prompt-only baseline (or the
    base model, or the runner-up when neither applies)."""
    judged = [p for p in pairs if p.result.n]
    if not judged or not ranking:
        return None
    best = candidates[ranking[0].index]
    for kind in (CandidateKind.PROMPT, CandidateKind.BASE):
        for p in judged:
            other = p.b if p.a.pk == best.pk else p.a if p.b.pk == best.pk else None
            if other is not None and other.kind == kind:
                return p
    runner_up = candidates[ranking[1].index] if len(ranking) > 1 else None
    for p in judged:
        if runner_up is not None and {p.a.pk, p.b.pk} == {best.pk, runner_up.pk}:
            return p
    return max(judged, key=lambda p: p.result.n)


def _ranking_chart(rows: list[st.Ranking], candidates: list[Candidate]) -> list[dict]:
    """Strength on a log2 axis, mapped to x = 180..410 of a 420-unit-wide SVG (labels on the left)."""
    if not rows:
        return []
    logs = [math.log2(v) for r in rows for v in (r.low, r.high, r.strength)]
    lo, hi = min(logs + [-1.0]), max(logs + [1.0])
    span = hi - lo or 1.0

    def x(v: float) -> float:
        return round(180 + 230 * (math.log2(v) - lo) / span, 1)

    return [{"rank": n + 1, "candidate": candidates[r.index], "strength": r.strength, "low": r.low, "high": r.high,
             "win_prob": r.win_prob_vs_average, "x": x(r.strength), "x_low": x(r.low), "x_high": x(r.high), "x_one": x(1.0), "y": 24 * n + 16}
            for n, r in enumerate(rows)]


def _criteria(evaluation: Evaluation, candidates: list[Candidate]) -> list[dict]:
    values: dict[tuple[int, int], list[int]] = defaultdict(list)
    for criterion_id, candidate_id, value in Score.objects.filter(judgment__evaluation=evaluation).values_list(
            "criterion_id", "candidate_id", "value"):
        values[(criterion_id, candidate_id)].append(value)
    rows = []
    for criterion in evaluation.rubric.criteria.all():
        top = max(criterion.values)
        cells = []
        for c in candidates:
            m = st.mean_interval(values.get((criterion.pk, c.pk), []))
            cells.append({"candidate": c, "m": m, "width": round(100 * m.mean / top, 1) if m else 0,
                          "low": round(100 * m.low / top, 1) if m else 0, "high": round(100 * min(m.high, top) / top, 1) if m else 0})
        rows.append({"criterion": criterion, "cells": cells, "top": top})
    return rows


def _metrics(evaluation: Evaluation, candidates: list[Candidate]) -> list[dict]:
    sims: dict[int, list[float]] = defaultdict(list)
    for candidate_id, similarity in Generation.objects.filter(candidate__evaluation=evaluation).values_list("candidate_id", "similarity"):
        sims[candidate_id].append(similarity)
    stats = {row["candidate_id"]: row for row in Generation.objects.filter(candidate__evaluation=evaluation)
             .values("candidate_id").annotate(tokens=Avg("output_tokens"), latency=Avg("latency_ms"), n=Count("id"))}
    return [{"candidate": c, "val_loss": c.run.final_val_loss if c.run_id else None,
             "similarity": st.mean_interval(sims.get(c.pk, [])), "tokens": stats.get(c.pk, {}).get("tokens"),
             "latency": stats.get(c.pk, {}).get("latency"), "n": stats.get(c.pk, {}).get("n", 0)} for c in candidates]


# --- side by side -------------------------------------------------------------------------------------
FILTERS = {"": "All examples", "reviewers": "Reviewers disagree", "candidates": "Candidates disagree"}


def side_by_side(evaluation: Evaluation, *, show: str = ""):
    """Items with every candidate's output and the verdicts given on them, optionally only those where
    reviewers disagree (the same pair judged differently) or candidates disagree (the verdicts on the
    item's pairs do not all favour one candidate, or the outputs differ while the judges called a tie)."""
    candidates = list(evaluation.candidates.order_by("position"))
    verdicts: dict[int, list[tuple[int, int | None, int, int]]] = defaultdict(list)
    for item_id, comparison_id, winner, c1, c2 in Judgment.objects.filter(evaluation=evaluation).values_list(
            "comparison__item_id", "comparison_id", "winner_id", "comparison__candidate_1_id", "comparison__candidate_2_id"):
        verdicts[item_id].append((comparison_id, winner, c1, c2))
    items = eval_items(evaluation)
    if show == "reviewers":
        keep = {item for item, vs in verdicts.items() if _reviewers_disagree(vs)}
        items = items.filter(pk__in=keep)
    elif show == "candidates":
        keep = {item for item, vs in verdicts.items() if _candidates_disagree(vs)}
        items = items.filter(pk__in=keep)
    return candidates, items, verdicts


def _reviewers_disagree(vs) -> bool:
    by_pair: dict[int, set] = defaultdict(set)
    for comparison_id, winner, _, _ in vs:
        by_pair[comparison_id].add(winner)
    return any(len(w) > 1 for w in by_pair.values())


def _candidates_disagree(vs) -> bool:
    """No single candidate won every judgment on this item (a split decision, a tie, or a cycle)."""
    winners = {w for _, w, _, _ in vs}
    return len(winners) > 1 or None in winners


def rows_for(items, candidates, verdicts) -> list[dict]:
    """Outputs per item for one page of items (two queries, whatever the page size)."""
    items = list(items)
    outputs = defaultdict(dict)
    for g in Generation.objects.filter(item__in=items, candidate__in=candidates).only("item_id", "candidate_id", "output", "similarity"):
        outputs[g.item_id][g.candidate_id] = g
    labels = {c.pk: c.label for c in candidates}
    rows = []
    for item in items:
        wins = defaultdict(int)
        ties = 0
        for _, winner, _, _ in verdicts.get(item.pk, []):
            if winner is None:
                ties += 1
            else:
                wins[winner] += 1
        summary = ", ".join(f"{labels[c]} won {n}" for c, n in sorted(wins.items(), key=lambda kv: -kv[1]))
        if ties:
            summary += (", " if summary else "") + f"{ties} tie{'s' if ties != 1 else ''}"
        rows.append({"item": item, "outputs": [(c, outputs[item.pk].get(c.pk)) for c in candidates],
                     "summary": summary or "not judged yet"})
    return rows


# --- progress -----------------------------------------------------------------------------------------
def reviewer_progress(evaluation: Evaluation) -> list[dict]:
    users = get_user_model().objects.filter(pk__in=reviewer_ids(evaluation.project)).order_by("username")
    counts = {row["reviewer_id"]: row for row in Assignment.objects.filter(evaluation=evaluation).values("reviewer_id")
              .annotate(done=Count("id", filter=Q(completed_at__isnull=False)), open=Count("id", filter=Q(completed_at__isnull=True)))}
    return [{"user": u, "done": counts.get(u.pk, {}).get("done", 0), "open": counts.get(u.pk, {}).get("open", 0),
             "remaining": remaining_for(evaluation, u)} for u in users]


def review_totals(evaluation: Evaluation) -> dict:
    pairs = Comparison.objects.filter(evaluation=evaluation).count()
    return {"pairs": pairs, "needed": pairs * evaluation.reviewers_per_pair,
            "judged": Judgment.objects.filter(evaluation=evaluation).count()}


def queue_for(project, user) -> list[dict]:
    """Ready evaluations of a project with how much review work is left for this user."""
    rows = []
    for evaluation in Evaluation.objects.filter(project=project, status="ready").select_related("rubric").order_by("-created_at"):
        done = Judgment.objects.filter(evaluation=evaluation, reviewer=user).count()
        rows.append({"evaluation": evaluation, "done": done, "remaining": remaining_for(evaluation, user)})
    return rows
