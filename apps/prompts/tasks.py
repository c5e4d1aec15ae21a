"""Celery task of the prompt workspace; routed to queue `gpu` (ftstudio/celery.py): it loads a model."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="prompts.score_prompt_version", acks_late=True, reject_on_worker_lost=True)
def score_prompt_version(version_pk: int) -> str:
    """Generate and score a prompt version's outputs on its validation split; a second delivery finds it scored."""
    from .services import run_scoring

    version = run_scoring(version_pk)
    return version.status if version is not None else "missing"


@shared_task(name="prompts.reap")
def reap() -> dict[str, list[int]]:
    """Prompts' recovery pass, scheduled by the worker started with `-B` (ftstudio/celery.py); queue `default`."""
    from .services import reap as reap_now

    return reap_now()
