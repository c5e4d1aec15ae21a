"""Celery task of the automatic checks (queue `default`, the Celery default). Kept apart from ``tasks.py``
(generation); registered when the app is ready (``apps.py``) so every worker knows it."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="evaluations.run_checks", acks_late=True, reject_on_worker_lost=True)
def run_checks(evaluation_pk: int) -> int:
    """The rubric's automatic checks on every output of one evaluation; a second delivery finds nothing to do."""
    from apps.runs.jobs import held

    from .automatic import run_checks as run_all_checks
    from .generation import announce_checks_ended

    with held("checks", evaluation_pk) as lease:
        if lease is None:
            return 0
        try:
            return run_all_checks(evaluation_pk)
        finally:
            announce_checks_ended(evaluation_pk)


JUDGE_ATTEMPTS = 3  # deliveries that retry unjudged pairs, a minute apart, then it waits for the next manual run


@shared_task(name="evaluations.run_judge", acks_late=True, reject_on_worker_lost=True, bind=True)
def run_judge(self, evaluation_pk: int, attempt: int = 1) -> dict:
    """The LLM judge on every pair of one evaluation without a usable verdict; unjudged pairs are retried later."""
    from apps.runs.jobs import held

    from .automatic import run_judge as judge_all

    with held("judge", evaluation_pk) as lease:
        if lease is None:
            return {"judged": 0, "unjudged": 0}
        counts = judge_all(evaluation_pk)
    if counts["unjudged"] and attempt < JUDGE_ATTEMPTS:
        self.apply_async((evaluation_pk, attempt + 1), countdown=60 * attempt)
    return counts
