"""Writes for projects and memberships. Views, commands and the demo seed call these."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from .models import Invitation, Membership, Project, Role


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
    """Change a member's role. New members join by invitation (``invite``), so the answer for a name that is not a
    member is the same whether or not such a user exists. The last PM cannot be demoted."""
    if role not in Role.values:
        raise MembershipError(f"Unknown role {role!r}: choose one of {', '.join(Role.values)}.")
    membership = Membership.objects.select_for_update().filter(project=project, user__username=username.strip()).first()
    if membership is None:
        raise MembershipError(
            f"{username.strip()!r} is not a member of {project.name}. New members join by invitation: invite them "
            "by email address or send them a join link."
        )
    if membership.role == Role.PM and role != Role.PM:
        _refuse_if_last_pm(project, membership)
    membership.role = role
    membership.save(update_fields=["role", "updated_at"])
    return membership


def add_member(*, project: Project, user, role: str) -> Membership:
    """Make ``user`` a member with ``role`` (the demo seed, an accepted invitation); a member keeps their role."""
    membership, _ = Membership.objects.get_or_create(project=project, user=user, defaults={"role": role})
    return membership


# --- invitations ----------------------------------------------------------------------------------------
INVITATION_DAYS = 7


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invite(*, project: Project, role: str, email: str = "", created_by=None) -> tuple[Invitation, str]:
    """A new invitation and its token (shown once: only its hash is stored). With ``email``, only the user with that
    address may accept it; without, it is a join link for the first signed-in user who opens it."""
    if role not in Role.values:
        raise MembershipError(f"Unknown role {role!r}: choose one of {', '.join(Role.values)}.")
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        project=project,
        role=role,
        email=email.strip().lower(),
        token_hash=_token_hash(token),
        created_by=created_by,
        expires_at=timezone.now() + timedelta(days=INVITATION_DAYS),
    )
    return invitation, token


def open_invitation(token: str) -> Invitation:
    """The unused, unexpired invitation of this token, else MembershipError."""
    invitation = Invitation.objects.select_related("project").filter(token_hash=_token_hash(token or "")).first()
    if invitation is None or invitation.accepted_at is not None or invitation.expires_at <= timezone.now():
        raise MembershipError("This invitation has been used or has expired: ask the project's PM for a new one.")
    return invitation


@transaction.atomic
def accept_invitation(*, token: str, user) -> Membership:
    invitation = open_invitation(token)
    if invitation.email and invitation.email != (user.email or "").strip().lower():
        raise MembershipError(
            "This invitation is for another email address: sign in with the account it was sent to, or ask the "
            "project's PM for a join link."
        )
    if not Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True).update(
        accepted_at=timezone.now(), accepted_by=user, updated_at=timezone.now()
    ):
        raise MembershipError("This invitation has been used or has expired: ask the project's PM for a new one.")
    return add_member(project=invitation.project, user=user, role=invitation.role)


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
