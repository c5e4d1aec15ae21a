"""Celery task of the automatic checks (queue `default`, the Celery default). Kept apart from ``tasks.py``
(generation); registered when the app is ready (``apps.py``) so every worker knows it."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(name="evaluations.run_checks", acks_late=True, reject_on_worker_lost=True)
def run_checks(evaluation_pk: int) -> int:
    """The rubric's automatic checks on every output of one evaluation; a second delivery finds nothing to do."""
    return services.run_checks(evaluation_pk)
