"""Evaluations: reads (no writes): the review state services and permissions decide with (items, open pairs, the
stopping rule, what is left), reviewer progress and side-by-side rows; the results are read in ``results.py``.

Everything a chart needs is computed here as numbers (the templates draw inline SVG from them)."""

from __future__ import annotations

import statistics as pystats
from collections import defaultdict
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import Count, Q

from apps.accounts.models import Membership
from apps.accounts.permissions import role_can
from apps.datasets.models import DatasetVersionItem
from apps.fleet import queues as fleet_queues

from . import statistics as st
from .models import (
    Assignment,
    Candidate,
    Comparison,
    Evaluation,
    Generation,
    Judgment,
    Rubric,
    Unblinding,
)


# --- review state (services read these too) ------------------------------------------------------------
def eval_items(evaluation: Evaluation):
    return DatasetVersionItem.objects.filter(
        version=evaluation.dataset_version_id, split__in=evaluation.splits
    ).order_by("position")


def reviewer_ids(project) -> list[int]:
    return [m.user_id for m in Membership.objects.filter(project=project) if role_can(m.role, "review")]


def has_seen_labels(evaluation: Evaluation, user) -> bool:
    return Unblinding.objects.filter(evaluation=evaluation, user=user).exists()


def has_started_review(evaluation: Evaluation, user) -> bool:
    return Assignment.objects.filter(evaluation=evaluation, reviewer=user).exists()


def pending_assignments(evaluation: Evaluation, reviewer):
    return Assignment.objects.filter(evaluation=evaluation, reviewer=reviewer, completed_at__isnull=True)


@dataclass(frozen=True)
class PairStop:
    """Whether review of one candidate pair goes on: ``reason`` is "settled" (its 95% interval excludes
    parity), "cap" (the evaluation's cap of judged items is reached) or "" (still handed out)."""

    candidate_1_id: int
    candidate_2_id: int
    outcome: st.PairOutcome
    reason: str

    @property
    def stopped(self) -> bool:
        return bool(self.reason)


def first_score(winner_id: int | None, candidate_1_id: int) -> float:
    """One verdict as a score for the comparison's first candidate: 1 a win, 0 a loss, 0.5 a tie."""
    return 0.5 if winner_id is None else 1.0 if winner_id == candidate_1_id else 0.0


def pair_stops(evaluation: Evaluation) -> dict[tuple[int, int], PairStop]:
    """The stopping rule per candidate pair, from the same item-level head to head as the results page
    (``statistics.compare_pair`` on this evaluation's judgments)."""
    candidates = list(evaluation.candidates.order_by("position").values_list("pk", flat=True))
    scores: dict[tuple[int, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item_id, c1, c2, winner in Judgment.objects.filter(evaluation=evaluation).values_list(
        "comparison__item_id", "comparison__candidate_1_id", "comparison__candidate_2_id", "winner_id"
    ):
        scores[(c1, c2)][item_id].append(first_score(winner, c1))
    looks = eval_items(evaluation).count()
    stops = {}
    for i, a in enumerate(candidates):
        for b in candidates[i + 1 :]:
            outcome = st.compare_pair(scores.get((a, b), {}))
            if evaluation.stop_when_settled and st.settled_early(outcome, looks):
                reason = "settled"
            elif evaluation.pair_cap is not None and outcome.items >= evaluation.pair_cap:
                reason = "cap"
            else:
                reason = ""
            stops[(a, b)] = PairStop(a, b, outcome, reason)
    return stops


def open_pairs(evaluation: Evaluation, reviewer):
    """Comparisons that still need reviewers, whose candidate pair has not stopped (settled or capped),
    and that this reviewer has not been given."""
    pairs = (
        Comparison.objects.filter(evaluation=evaluation)
        .annotate(n=Count("assignments"))
        .filter(n__lt=evaluation.reviewers_per_pair)
        .exclude(assignments__reviewer=reviewer)
    )
    for (c1, c2), stop in pair_stops(evaluation).items():
        if stop.stopped:
            pairs = pairs.exclude(candidate_1_id=c1, candidate_2_id=c2)
    return pairs.order_by("n", "order_key")


def pairs_left(evaluation: Evaluation, reviewer) -> int:
    """Pairs this reviewer holds unjudged plus those still open to them (whether or not they have seen labels)."""
    return pending_assignments(evaluation, reviewer).count() + open_pairs(evaluation, reviewer).count()


def remaining_for(evaluation: Evaluation, reviewer) -> int:
    """Pairs left for this reviewer: none once they have seen which candidate wrote what."""
    return 0 if has_seen_labels(evaluation, reviewer) else pairs_left(evaluation, reviewer)


@dataclass
class Side:
    letter: str
    candidate: Candidate
    output: str


def sides(assignment: Assignment) -> list[Side]:
    c = assignment.comparison
    first, second = (c.candidate_2, c.candidate_1) if assignment.swapped else (c.candidate_1, c.candidate_2)
    outputs = dict(
        Generation.objects.filter(item_id=c.item_id, candidate__in=[first, second]).values_list(
            "candidate_id", "output"
        )
    )
    return [Side("A", first, outputs.get(first.pk, "")), Side("B", second, outputs.get(second.pk, ""))]


# --- side by side -------------------------------------------------------------------------------------
FILTERS = {"": "All examples", "reviewers": "Reviewers disagree", "candidates": "Candidates disagree"}


def side_by_side(evaluation: Evaluation, *, show: str = ""):
    """Items with every candidate's output and the verdicts given on them, optionally only those where
    reviewers disagree (the same pair judged differently) or candidates disagree (the verdicts on the
    item's pairs do not all favour one candidate, or the outputs differ while the judges called a tie)."""
    candidates = list(evaluation.candidates.order_by("position"))
    verdicts: dict[int, list[tuple[int, int | None, int, int]]] = defaultdict(list)
    for item_id, comparison_id, winner, c1, c2 in Judgment.objects.filter(evaluation=evaluation).values_list(
        "comparison__item_id", "comparison_id", "winner_id", "comparison__candidate_1_id", "comparison__candidate_2_id"
    ):
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
    for g in Generation.objects.filter(item__in=items, candidate__in=candidates).only(
        "item_id", "candidate_id", "output", "similarity"
    ):
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
        rows.append(
            {
                "item": item,
                "outputs": [(c, outputs[item.pk].get(c.pk)) for c in candidates],
                "summary": summary or "not judged yet",
            }
        )
    return rows


# --- progress -----------------------------------------------------------------------------------------
def judgment_seconds(evaluation: Evaluation) -> dict[int, list[float]]:
    """Seconds each judgment took, by reviewer id (judgments recorded before timing existed are left out)."""
    by_reviewer: dict[int, list[float]] = defaultdict(list)
    for reviewer_id, seconds in Judgment.objects.filter(evaluation=evaluation, seconds__isnull=False).values_list(
        "reviewer_id", "seconds"
    ):
        by_reviewer[reviewer_id].append(seconds)
    return by_reviewer


def _median(values: list[float]) -> float | None:
    return float(pystats.median(values)) if values else None


def reviewer_progress(evaluation: Evaluation) -> list[dict]:
    users = get_user_model().objects.filter(pk__in=reviewer_ids(evaluation.project)).order_by("username")
    counts = {
        row["reviewer_id"]: row
        for row in Assignment.objects.filter(evaluation=evaluation)
        .values("reviewer_id")
        .annotate(
            done=Count("id", filter=Q(completed_at__isnull=False)),
            open=Count("id", filter=Q(completed_at__isnull=True)),
        )
    }
    seconds = judgment_seconds(evaluation)
    return [
        {
            "user": u,
            "done": counts.get(u.pk, {}).get("done", 0),
            "open": counts.get(u.pk, {}).get("open", 0),
            "remaining": remaining_for(evaluation, u),
            "median_seconds": _median(seconds.get(u.pk, [])),
        }
        for u in users
    ]


def review_totals(evaluation: Evaluation) -> dict:
    pairs = Comparison.objects.filter(evaluation=evaluation).count()
    everyone = [s for values in judgment_seconds(evaluation).values() for s in values]
    return {
        "pairs": pairs,
        "needed": pairs * evaluation.reviewers_per_pair,
        "judged": Judgment.objects.filter(evaluation=evaluation).count(),
        "median_seconds": _median(everyone),
        "timed": len(everyone),
    }


STOP_WORDS = {
    "settled": "stopped: settled (its interval excludes parity even corrected for repeated looks)",
    "cap": "stopped: the cap of judged items is reached",
    "": "still handed out",
}


def stopping(evaluation: Evaluation) -> list[dict]:
    """Per candidate pair: judged items, the interval of the share of decided items, and whether (and why)
    assignment has stopped handing it out. Names the candidates: only for members who may see the labels."""
    labels = dict(evaluation.candidates.values_list("pk", "label"))
    rows = []
    for (c1, c2), stop in pair_stops(evaluation).items():
        o = stop.outcome
        rows.append(
            {
                "a": labels[c1],
                "b": labels[c2],
                "outcome": o,
                "reason": stop.reason,
                "why": STOP_WORDS[stop.reason]
                if stop.reason != "cap"
                else f"stopped: the cap of {evaluation.pair_cap} judged items is reached",
            }
        )
    return rows


def queue_for(project, user) -> list[dict]:
    """Ready evaluations of a project with how much review work is left for this user."""
    rows = []
    for evaluation in (
        Evaluation.objects.filter(project=project, status="ready").select_related("rubric").order_by("-created_at")
    ):
        done = Judgment.objects.filter(evaluation=evaluation, reviewer=user).count()
        rows.append(
            {
                "evaluation": evaluation,
                "done": done,
                "remaining": remaining_for(evaluation, user),
                "seen": has_seen_labels(evaluation, user),
            }
        )
    return rows


def newest_rubric(project) -> Rubric | None:
    """The rubric a new prompt version or experiment is scored with by default: the project's most recently written
    rubric, at its newest version."""
    newest = Rubric.objects.filter(project=project).order_by("-created_at", "-pk").first()
    if newest is None:
        return None
    return Rubric.objects.filter(project=project, name=newest.name).order_by("-version").first()


def evaluation_queue(evaluation_pk) -> str:
    """An evaluation generates with every candidate's base model: the largest requirement decides."""
    evaluation = Evaluation.objects.filter(pk=evaluation_pk).first()
    if evaluation is None:
        return fleet_queues.DEFAULT_QUEUE
    needs = [evaluation.base_model.min_gpu_gb if evaluation.base_model_id else 0]
    needs += [c.run.base_model.min_gpu_gb for c in evaluation.candidates.select_related("run__base_model") if c.run_id]
    return fleet_queues.queue_for(max(needs))
