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
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.dispatch import Signal
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


def access_for(project: Project, user) -> Access | None:
    """What ``user`` may do in ``project``: their membership's role (staff: everything); None for an outsider."""
    role = Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()
    if role is None and not user.is_staff:
        return None
    return Access(project=project, role=role, is_admin=user.is_staff)


def get_access(user, slug: str) -> Access:
    """Look a project up for a user; 404 when they are not a member (so its existence is not leaked)."""
    if not user.is_authenticated:
        raise Http404("No such project")
    try:
        project = Project.objects.get(slug=slug)
    except Project.DoesNotExist:
        raise Http404("No such project") from None
    access = access_for(project, user)
    if access is None:
        raise Http404("No such project")
    return access


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
# Whether a member has blind review work ahead in a project. The rules belong to apps/evaluations (blind.py), which
# answers in its AppConfig.ready; receivers take (project, user, access, besides) and answer True or False.
blind_work_asked = Signal()


def judging_blind(project: Project, user, access: Access, *, besides=None) -> bool:
    """True while the user has blind review work ahead in any live evaluation of the project (other than
    ``besides``). Such a member gets no adapter downloads, run logs, system prompts or labelled examples:
    any of them could teach them to tell the candidates apart."""
    answers = blind_work_asked.send(sender=None, project=project, user=user, access=access, besides=besides)
    return any(answer for _receiver, answer in answers)
