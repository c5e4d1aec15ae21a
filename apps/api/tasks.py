"""Celery tasks of the API (queue ``default``)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="api.validate_fine_tuning_job", queue="default", acks_late=True)
def validate_fine_tuning_job(job_pk: int) -> str:
    """Validate a large job's files and launch its run; a job already validated is left alone."""
    from .ft_jobs import validate_and_launch

    job = validate_and_launch(job_pk)
    return job.stage if job is not None else "missing"


@shared_task(name="api.reap", queue="default")
def reap() -> dict[str, list[int]]:
    """The API's recovery pass (jobs whose validation message was lost), scheduled by ftstudio/celery.py."""
    from .ft_jobs import reap as reap_now

    return reap_now()


@shared_task(name="api.delete_expired_completions", queue="default")
def delete_expired_completions() -> int:
    """Delete stored completions older than their project's retention period (periodic)."""
    from .services import delete_expired_completions as delete

    return delete()
