"""Writes for projects and memberships. Views, commands and the demo seed call these."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils.text import slugify

from .models import Membership, Project, Role


class MembershipError(ValueError):
    """A membership change a user asked for that cannot be made; the message says why."""


def unique_slug(name: str) -> str:
    base = slugify(name)[:70] or "project"
    slug, n = base, 2
    while Project.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


@transaction.atomic
def create_project(*, name: str, created_by, description: str = "", slug: str | None = None) -> Project:
    """Create a project; its creator becomes its PM (who manages members)."""
    project = Project.objects.create(
        name=name.strip(), slug=slug or unique_slug(name), description=description.strip(), created_by=created_by
    )
    Membership.objects.create(project=project, user=created_by, role=Role.PM)
    return project


@transaction.atomic
def set_member_role(*, project: Project, username: str, role: str) -> Membership:
    """Add a user to a project, or change their role. The last PM cannot be demoted."""
    if role not in Role.values:
        raise MembershipError(f"Unknown role {role!r}: choose one of {', '.join(Role.values)}.")
    user = get_user_model().objects.filter(username=username.strip()).first()
    if user is None:
        raise MembershipError(f"No user is called {username.strip()!r}. Ask an admin to create the account first.")
    membership = Membership.objects.select_for_update().filter(project=project, user=user).first()
    if membership and membership.role == Role.PM and role != Role.PM:
        _refuse_if_last_pm(project, membership)
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


@transaction.atomic
def remove_member(*, project: Project, membership_id: int) -> None:
    membership = Membership.objects.select_for_update().filter(project=project, pk=membership_id).first()
    if membership is None:
        raise MembershipError("That person is not a member of this project.")
    if membership.role == Role.PM:
        _refuse_if_last_pm(project, membership)
    membership.delete()


def _refuse_if_last_pm(project: Project, membership: Membership) -> None:
    if not Membership.objects.filter(project=project, role=Role.PM).exclude(pk=membership.pk).exists():
        raise MembershipError(f"{membership.user.username} is the project's only PM: make someone else PM first.")
