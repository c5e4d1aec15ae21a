"""What every management command looks up first, with the error a person at the terminal can act on."""

from __future__ import annotations

from django.core.management.base import CommandError


def project_from(slug: str):
    from apps.accounts.models import Project

    project = Project.objects.filter(slug=slug).first()
    if project is None:
        raise CommandError(f"No project with slug {slug!r}.")
    return project


def version_from(project, number: int):
    from apps.datasets.models import DatasetVersion

    version = DatasetVersion.objects.filter(project=project, number=number).first()
    if version is None:
        raise CommandError(f"Project {project.slug} has no dataset version {number}.")
    return version
