"""Blind review: what a member may see of an evaluation while they judge its pairs, and what they may not use
elsewhere in the project (run downloads, logs, the candidates' models) while they have blind work ahead."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from apps.accounts.models import Project
from apps.accounts.permissions import Access

from .models import Evaluation, EvaluationStatus
from .selectors import has_seen_labels, has_started_review, pairs_left


@dataclass(frozen=True)
class Sight:
    """What one member may see of one evaluation's labels (which candidate wrote which output)."""

    labels: bool  # the results: verdicts, head to head, ranking, per-criterion scores
    examples: bool = False  # the labelled outputs example by example, the judgments export, the candidates' setup
    reveal: bool = False  # hidden, but theirs for one click that takes them off the evaluation's blind review
    reason: str = ""


class ReviewState:
    """One member's review state of one evaluation, each part read at most once (``remaining`` runs the stopping
    rule over every judgment of the evaluation: one call of ``evaluation_sight`` used to compute it three times)."""

    def __init__(self, evaluation, user) -> None:
        self.evaluation, self.user = evaluation, user

    @cached_property
    def seen(self) -> bool:
        return has_seen_labels(self.evaluation, self.user)

    @cached_property
    def remaining(self) -> int:
        return 0 if self.seen else pairs_left(self.evaluation, self.user)

    @cached_property
    def started(self) -> bool:
        return has_started_review(self.evaluation, self.user)


def _blind_work_ahead(state: ReviewState, access: Access) -> bool:
    """Whether the member still has pairs of this evaluation to judge blind (or will, as a reviewer)."""
    evaluation = state.evaluation
    if evaluation.status == EvaluationStatus.FAILED or state.seen:
        return False
    if evaluation.status != EvaluationStatus.READY:
        return not access.allows("evaluate")  # reviewers will judge it; PMs only if they choose to
    if access.allows("evaluate"):
        return state.started and bool(state.remaining)  # the cheap question first: the run page polls this
    return bool(state.remaining)


def judging_blind(project: Project, user, access: Access, *, besides=None) -> bool:
    """True while the user has blind review work ahead in any live evaluation of the project (other than
    ``besides``); ``apps.accounts.permissions.judging_blind`` asks it for the apps below evaluations."""
    if not access.allows("review") or not user.is_authenticated:
        return False
    others = Evaluation.objects.filter(project=project).exclude(pk=getattr(besides, "pk", None))
    return any(_blind_work_ahead(ReviewState(e, user), access) for e in others)


def may_call_run(run, user, access: Access) -> bool:
    """Whether the member may call this run's model (the playground, /v1/chat): not while they have blind review
    work ahead in an evaluation of which it is a candidate, since its answers would tell the candidates apart."""
    if not access.allows("review") or not user.is_authenticated:
        return True
    evaluations = Evaluation.objects.filter(project_id=run.project_id, candidates__run=run).distinct()
    return not any(_blind_work_ahead(ReviewState(e, user), access) for e in evaluations)


def evaluation_sight(evaluation, user, access: Access) -> Sight:
    """Blind for everyone who judges, whatever their role.

    * Members who cannot review (designers) see everything: they never judge.
    * Whoever has started judging sees no labels until their own pairs are all judged: PMs and staff too.
      Reviewers are judges by role: they see nothing until it is ready and they have nothing left.
    * Whoever has seen the labels (launched the evaluation, revealed them, or finished) is never handed its
      pairs again (``apps.evaluations.review.next_assignment``).
    * A PM or staff member who has not started judging may reveal the labels, which ends their review of it.
    * Once allowed, everyone sees the aggregates; the labelled examples, the export and the candidates'
      setup only if they may (PMs; reviewers if the PM allowed it) and have no blind work left elsewhere
      in the project.
    """
    if not access.allows("review"):
        return Sight(labels=True, examples=True)
    state = ReviewState(evaluation, user)
    if _blind_work_ahead(state, access):
        if access.allows("evaluate"):
            remaining = state.remaining
            return Sight(
                labels=False,
                reason=f"You are reviewing this evaluation blind: its results and candidates stay "
                f"hidden until you have judged your {remaining} remaining pair"
                f"{'s' if remaining != 1 else ''}.",
            )
        return Sight(
            labels=False,
            reason="Results and candidates stay hidden until you have judged your own pairs of this evaluation.",
        )
    may_reveal = (
        access.allows("evaluate") and evaluation.status == EvaluationStatus.READY and not state.seen and state.remaining
    )
    if may_reveal:
        return Sight(
            labels=False,
            reveal=True,
            reason=(
                "You could still review this evaluation blind. Seeing its results or candidates shows which model "
                "wrote which output, so you will not be handed its pairs afterwards."
            ),
        )
    examples = access.allows("evaluate") or evaluation.reviewers_see_examples
    if examples and judging_blind(evaluation.project, user, access, besides=evaluation):
        return Sight(
            labels=True,
            examples=False,
            reason="Examples, candidates and exports stay hidden while you have "
            "blind review work in another evaluation of this project.",
        )
    return Sight(labels=True, examples=examples)


def answer_blind_work_asked(sender, *, project, user, access, besides=None, **kwargs) -> bool:
    """Receiver of ``apps.accounts.permissions.blind_work_asked`` (connected in EvaluationsConfig.ready)."""
    return judging_blind(project, user, access, besides=besides)
