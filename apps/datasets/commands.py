"""What management commands look up in a project's data, with the error a person at the terminal can act on."""

from __future__ import annotations

from django.core.management.base import CommandError

from .models import DatasetVersion


def version_from(project, number: int):
    version = DatasetVersion.objects.filter(project=project, number=number).first()
    if version is None:
        raise CommandError(f"Project {project.slug} has no dataset version {number}.")
    return version
