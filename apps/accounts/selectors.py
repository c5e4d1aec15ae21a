"""Accounts: reads (no writes). Which projects a user sees is an access rule and lives in ``permissions.py``
(``projects_for``); this is the settings page's list of members."""

from __future__ import annotations

from .models import Membership, Project


def project_members(project: Project):
    return Membership.objects.filter(project=project).select_related("user").order_by("user__username")
