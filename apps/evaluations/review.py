"""Evaluations: blind review (pairs handed out, sides balanced, judgments recorded) and its export."""

from __future__ import annotations

import random
from collections import defaultdict

from django.db import IntegrityError, transaction
from django.utils import timezone

from ftstudio import csv_cells

from .models import (
    Assignment,
    Comparison,
    Evaluation,
    EvaluationStatus,
    Judgment,
    ReviewMode,
    Score,
    Unblinding,
)
from .selectors import has_seen_labels, open_pairs, pending_assignments, sides
from .services import EvaluationError
from .signals import evaluation_reviewed

# --- review -------------------------------------------------------------------------------------------
# Blind means: whoever judges a pair cannot have seen which candidate wrote which output. Two rules keep it:
# nobody sees an evaluation's labels before finishing their own pairs (apps/evaluations/blind.py,
# ``evaluation_sight``), and nobody who has seen them (an ``Unblinding``) is handed its pairs.
side_rng = random.SystemRandom()  # the coin for sides; tests may swap in a seeded random.Random


def record_unblinding(*, evaluation: Evaluation, user, reason: str) -> None:
    """Note that ``user`` has seen which candidate wrote what; any pair they hold unjudged goes back to the pool."""
    with transaction.atomic():
        Unblinding.objects.get_or_create(evaluation=evaluation, user=user, defaults={"reason": reason})
        pending_assignments(evaluation, user).delete()


# How far a reviewer's sides of one candidate pair may drift from even before the next side is forced back.
# Forcing at every imbalance of one (the old rule) fixed half the sides: a reviewer who recognised one
# candidate's style guessed the next side 75% of the time. With a fair coin until the imbalance reaches this
# limit (Soares and Wu's "big stick" design), the best guess (the side owed) is right at most 0.5 + 1/(4 x 6),
# about 54%, consecutive sides correlate at about -0.07, and each candidate stays within 6 of even.
SIDE_IMBALANCE_LIMIT = 6


def side_swapped(owed: int, coin: float) -> bool:
    """Whether the next pair of a candidate pair is shown swapped (candidate_2 on side A), given ``owed`` (how
    many more times this reviewer saw its candidate_1 on side A than on B) and a uniform ``coin``: a fair coin
    while the imbalance is under the limit, else the side that brings it back."""
    if abs(owed) >= SIDE_IMBALANCE_LIMIT:
        return owed > 0
    return coin < 0.5


def _pick_pair_and_side(evaluation: Evaluation, reviewer) -> tuple[int, bool] | None:
    """The next comparison for this reviewer and whether its sides are swapped.

    Balance: per candidate pair and reviewer, each candidate is shown on side A within
    ``SIDE_IMBALANCE_LIMIT`` of as often as on B, at every point of the reviewer's list. Unpredictability: the
    side is a fair coin until that limit (:func:`side_swapped`), and a pair whose side is forced is handed out
    only when no other is open, so no side can be told from the ones seen before it beyond that bound.
    """
    balance: dict[tuple[int, int], int] = defaultdict(int)  # > 0: candidate_1 was on side A more often
    mine = Assignment.objects.filter(evaluation=evaluation, reviewer=reviewer).values_list(
        "comparison__candidate_1_id", "comparison__candidate_2_id", "swapped"
    )
    for c1, c2, swapped in mine:
        balance[(c1, c2)] += -1 if swapped else 1
    rows = list(open_pairs(evaluation, reviewer).values_list("pk", "candidate_1_id", "candidate_2_id", "n")[:60])
    if not rows:
        return None
    fewest = rows[0][3]  # pairs that have the fewest reviewers so far are filled first
    rows = [r for r in rows if r[3] == fewest]
    chosen = next((r for r in rows if abs(balance[(r[1], r[2])]) < SIDE_IMBALANCE_LIMIT), rows[0])
    return chosen[0], side_swapped(balance[(chosen[1], chosen[2])], side_rng.random())


def next_assignment(*, evaluation: Evaluation, reviewer) -> Assignment | None:
    """The reviewer's unfinished pair, or a new one: never a pair they already have, and nothing for a
    member who has seen the evaluation's labels."""
    if evaluation.status != EvaluationStatus.READY or has_seen_labels(evaluation, reviewer):
        return None
    pending = pending_assignments(evaluation, reviewer).order_by("created_at", "id").first()
    if pending is not None:
        return pending
    for _ in range(5):  # another reviewer may take the last slot of a pair between our read and write
        picked = _pick_pair_and_side(evaluation, reviewer)
        if picked is None:
            return None
        comparison_pk, swapped = picked
        try:
            with transaction.atomic():
                comparison = Comparison.objects.select_for_update().get(pk=comparison_pk)
                if comparison.assignments.count() >= evaluation.reviewers_per_pair:
                    continue
                return Assignment.objects.create(
                    comparison=comparison, evaluation=evaluation, reviewer=reviewer, swapped=swapped
                )
        except IntegrityError:
            continue
    return None


def mark_shown(assignment: Assignment) -> None:
    """The first time a reviewer's pair page is rendered: the start of the time the judgment takes."""
    if assignment.shown_at is None and assignment.completed_at is None:
        Assignment.objects.filter(pk=assignment.pk, shown_at__isnull=True).update(shown_at=timezone.now())


@transaction.atomic
def submit_judgment(
    *, assignment: Assignment, reviewer, winner: str, scores: dict[tuple[str, int], int], comment: str = ""
) -> Judgment:
    """Record a reviewer's verdict. ``winner`` is "A", "B" or "tie" as shown; ``scores`` maps
    (side letter, criterion id) to a value on that criterion's scale, each one optional; a rubric that asks
    for the overall winner only takes no scores. Stored against the candidates, with the seconds the
    judgment took (from the page being shown, else from the pair being handed out)."""
    assignment = Assignment.objects.select_for_update().select_related("comparison").get(pk=assignment.pk)
    if assignment.reviewer_id != reviewer.pk:
        raise EvaluationError("This pair is assigned to another reviewer.")
    if (
        assignment.completed_at is not None
        or Judgment.objects.filter(comparison=assignment.comparison, reviewer=reviewer).exists()
    ):
        raise EvaluationError("You have already judged this pair; a pair is judged once per reviewer.")
    by_letter = {s.letter: s.candidate for s in sides(assignment)}
    if winner not in ("A", "B", "tie"):
        raise EvaluationError(f"Pick A, B or tie (got {winner!r}).")
    rubric = assignment.evaluation.rubric
    if rubric.review_mode == ReviewMode.WINNER and scores:
        raise EvaluationError(f"Rubric {rubric} asks for the overall winner only; it takes no per-criterion scores.")
    criteria = list(rubric.criteria.all())
    rows = []
    for criterion in criteria:
        for letter in ("A", "B"):
            value = scores.get((letter, criterion.pk))
            if value is None:
                continue
            if value not in criterion.values:
                raise EvaluationError(
                    f"{value} is outside the {criterion.get_scale_display()} scale of "
                    f"{criterion.name!r} (side {letter}); allowed: {', '.join(map(str, criterion.values))}."
                )
            rows.append((criterion, by_letter[letter], value))
    unknown = {cid for _, cid in scores} - {c.pk for c in criteria}
    if unknown:
        raise EvaluationError(f"Criteria {sorted(unknown)} are not in this evaluation's rubric.")
    now = timezone.now()
    started = assignment.shown_at or assignment.created_at
    judgment = Judgment.objects.create(
        assignment=assignment,
        comparison=assignment.comparison,
        evaluation_id=assignment.evaluation_id,
        reviewer=reviewer,
        winner=None if winner == "tie" else by_letter[winner],
        comment=comment.strip()[:4000],
        seconds=max(0.0, (now - started).total_seconds()),
    )
    Score.objects.bulk_create([Score(judgment=judgment, criterion=c, candidate=cand, value=v) for c, cand, v in rows])
    assignment.completed_at = now
    assignment.save(update_fields=["completed_at"])
    transaction.on_commit(
        lambda: evaluation_reviewed.send(
            sender=Evaluation, evaluation_pk=assignment.evaluation_id, reviewer_pk=reviewer.pk
        )
    )
    return judgment


# --- export -------------------------------------------------------------------------------------------
def write_judgments_csv(evaluation: Evaluation, out) -> None:
    criteria = list(evaluation.rubric.criteria.all())
    writer = csv_cells.writer(out)
    writer.writerow(
        [
            "judgment_id",
            "item_position",
            "split",
            "reviewer",
            "candidate_1",
            "candidate_2",
            "shown_as_A",
            "winner",
            *[f"{c.name} [{n}]" for c in criteria for n in ("candidate_1", "candidate_2")],
            "comment",
            "created_at",
        ]
    )
    judgments = (
        Judgment.objects.filter(evaluation=evaluation)
        .select_related(
            "comparison__item", "comparison__candidate_1", "comparison__candidate_2", "reviewer", "winner", "assignment"
        )
        .prefetch_related("scores")
        .order_by("created_at", "id")
    )
    for j in judgments:
        c = j.comparison
        values = {(s.criterion_id, s.candidate_id): s.value for s in j.scores.all()}
        shown_a = c.candidate_2 if j.assignment.swapped else c.candidate_1
        writer.writerow(
            [
                j.pk,
                c.item.position,
                c.item.split,
                j.reviewer.username,
                c.candidate_1.label,
                c.candidate_2.label,
                shown_a.label,
                j.winner.label if j.winner else "tie",
                *[values.get((cr.pk, cand.pk), "") for cr in criteria for cand in (c.candidate_1, c.candidate_2)],
                j.comment,
                j.created_at.isoformat(),
            ]
        )
