"""Celery tasks of evaluations. `evaluations.generate_outputs` is routed to queue `gpu` (ftstudio/celery.py)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="evaluations.generate_outputs", acks_late=True, reject_on_worker_lost=True)
def generate_outputs(evaluation_pk: int) -> str:
    """Generate the missing outputs of one evaluation; a second delivery finds nothing left to do."""
    from .generation import run_generation

    evaluation = run_generation(evaluation_pk)
    return evaluation.status if evaluation is not None else "skipped"


@shared_task(name="evaluations.reap")
def reap() -> dict[str, list[int]]:
    """Evaluations' recovery pass, scheduled by the worker started with `-B` (ftstudio/celery.py)."""
    from .generation import reap as reap_now

    return reap_now()
