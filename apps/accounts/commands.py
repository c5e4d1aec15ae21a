"""What every management command looks up first, with the error a person at the terminal can act on: the project."""

from __future__ import annotations

from django.core.management.base import CommandError

from .models import Project


def project_from(slug: str):
    project = Project.objects.filter(slug=slug).first()
    if project is None:
        raise CommandError(f"No project with slug {slug!r}.")
    return project
