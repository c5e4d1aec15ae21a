"""Celery tasks of the traffic app (queue ``default``)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="traffic.measure_drift", queue="default", acks_late=True)
def measure_drift(project_pk: int) -> int:
    """Measure one project's drift per served run and week (the weeks measured are replaced: idempotent)."""
    from apps.accounts.models import Project

    from .services import measure_drift as measure

    project = Project.objects.filter(pk=project_pk).first()
    return len(measure(project=project)) if project is not None else 0


@shared_task(name="traffic.measure_drift_all", queue="default")
def measure_drift_all() -> int:
    """Periodic: send one drift measurement per project that has stored completions."""
    from apps.api.models import StoredCompletion

    pks = list(StoredCompletion.objects.values_list("project_id", flat=True).distinct())
    for pk in pks:
        measure_drift.delay(pk)
    return len(pks)


@shared_task(name="traffic.distill", queue="default", acks_late=True)
def distill(
    project_pk: int, public_ids: list[str], teacher: str, user_pk: int | None = None, version_pk: int | None = None
) -> dict:
    """Answer stored inputs, or a dataset version's training inputs (``version_pk``), with a teacher into drafts
    (inputs already answered by that teacher are skipped)."""
    from django.contrib.auth import get_user_model

    from apps.accounts.models import Project

    from .services import distill as run

    project = Project.objects.filter(pk=project_pk).first()
    if project is None:
        return {}
    user = get_user_model().objects.filter(pk=user_pk).first() if user_pk else None
    return run(project=project, public_ids=public_ids, teacher=teacher, user=user, version_id=version_pk)
