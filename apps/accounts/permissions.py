"""Who may do what: the one place that decides it.

Every project view is wrapped in :func:`project_view`, which looks the project up *through the
user's memberships* (outsiders get 404, never another project's data) and checks the capability
the view needs (members without it get 403). Querysets that list projects use
:func:`projects_for`. Views never re-implement these rules.

Capabilities:
  view      read the project's pages (every member)
  label     import, edit, approve, split and freeze examples; dismiss quality findings
  rubric    write and version rubrics
  run       launch, cancel and compare fine-tuning runs; register base models
  evaluate  create evaluations and assign reviews
  review    work through the blind review queue
  playground  call models (playground, /v1/chat/completions); not reviewers, who keep the blind queue
  manage    project settings and members
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse

from .models import Membership, Project, Role

CAPABILITIES = ("view", "label", "rubric", "run", "evaluate", "review", "manage", "playground")

ROLE_CAPABILITIES: dict[str, frozenset[str]] = {
    Role.DESIGNER: frozenset({"view", "label", "rubric", "playground"}),
    Role.PM: frozenset({"view", "label", "rubric", "run", "evaluate", "review", "manage", "playground"}),
    Role.REVIEWER: frozenset({"view", "review"}),
}


def role_can(role: str | None, capability: str) -> bool:
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}")
    return role is not None and capability in ROLE_CAPABILITIES.get(role, frozenset())


@dataclass(frozen=True)
class Access:
    """What the current user may do in one project; templates read `access.can.label` etc."""

    project: Project
    role: str | None
    is_admin: bool

    def allows(self, capability: str) -> bool:
        return self.is_admin or role_can(self.role, capability)

    @property
    def can(self) -> dict[str, bool]:
        return {cap: self.allows(cap) for cap in CAPABILITIES}


def projects_for(user) -> QuerySet[Project]:
    """The projects a user may see: their memberships (staff see all)."""
    if not user.is_authenticated:
        return Project.objects.none()
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user)


def get_access(user, slug: str) -> Access:
    """Look a project up for a user; 404 when they are not a member (so its existence is not leaked)."""
    if not user.is_authenticated:
        raise Http404("No such project")
    try:
        project = Project.objects.get(slug=slug)
    except Project.DoesNotExist:
        raise Http404("No such project") from None
    role = Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()
    if role is None and not user.is_staff:
        raise Http404("No such project")
    return Access(project=project, role=role, is_admin=user.is_staff)


def get_project_for(request: HttpRequest, slug: str, need: str = "view") -> tuple[Project, Access]:
    access = get_access(request.user, slug)
    if not access.allows(need):
        raise PermissionDenied(f"Your role in {access.project.name} does not allow this ({need}).")
    return access.project, access


def project_view(need: str = "view", post_need: str | None = None) -> Callable:
    """Decorate a view taking ``(request, project, ...)`` under a URL with ``<slug:slug>``.

    ``need`` is checked for safe methods, ``post_need`` (default: ``need``) for POST/PUT/PATCH/DELETE.
    The wrapper sets ``request.project`` and ``request.access`` for templates.
    """
    if need not in CAPABILITIES or (post_need and post_need not in CAPABILITIES):
        raise ValueError(f"unknown capability in project_view({need!r}, {post_need!r})")

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, slug: str, *args, **kwargs) -> HttpResponse:
            required = need if request.method in ("GET", "HEAD", "OPTIONS") else (post_need or need)
            project, access = get_project_for(request, slug, need=required)
            request.project = project
            request.access = access
            return view(request, project, *args, **kwargs)

        wrapper.required_capability = need
        wrapper.required_post_capability = post_need or need
        return wrapper

    return decorator


# --- blind review -------------------------------------------------------------------------------------
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
        from apps.evaluations.selectors import has_seen_labels

        return has_seen_labels(self.evaluation, self.user)

    @cached_property
    def remaining(self) -> int:
        from apps.evaluations.selectors import pairs_left

        return 0 if self.seen else pairs_left(self.evaluation, self.user)

    @cached_property
    def started(self) -> bool:
        from apps.evaluations.selectors import has_started_review

        return has_started_review(self.evaluation, self.user)


def _blind_work_ahead(state: ReviewState, access: Access) -> bool:
    """Whether the member still has pairs of this evaluation to judge blind (or will, as a reviewer)."""
    from apps.evaluations.models import EvaluationStatus

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
    ``besides``). Such a member gets no adapter downloads, run logs, system prompts or labelled examples:
    any of them could teach them to tell the candidates apart."""
    from apps.evaluations.models import Evaluation

    if not access.allows("review") or not user.is_authenticated:
        return False
    others = Evaluation.objects.filter(project=project).exclude(pk=getattr(besides, "pk", None))
    return any(_blind_work_ahead(ReviewState(e, user), access) for e in others)


def may_call_run(run, user, access: Access) -> bool:
    """Whether the member may call this run's model (the playground, /v1/chat): not while they have blind review
    work ahead in an evaluation of which it is a candidate, since its answers would tell the candidates apart."""
    from apps.evaluations.models import Evaluation

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
      pairs again (``apps.evaluations.services.next_assignment``).
    * A PM or staff member who has not started judging may reveal the labels, which ends their review of it.
    * Once allowed, everyone sees the aggregates; the labelled examples, the export and the candidates'
      setup only if they may (PMs; reviewers if the PM allowed it) and have no blind work left elsewhere
      in the project.
    """
    from apps.evaluations.models import EvaluationStatus

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
