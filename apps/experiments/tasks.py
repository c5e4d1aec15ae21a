"""Celery tasks of experiments (queue `default`). `experiments.advance` is sent when one of an experiment's runs,
generations or check passes ends (signals.py); `experiments.advance_open` runs on the reaper's schedule."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="experiments.advance", acks_late=True)
def advance_experiment_task(experiment_pk: int) -> str:
    """Evaluate the experiment's newly succeeded runs and finish it when every point is done; idempotent."""
    from .services import advance_experiment

    return advance_experiment(experiment_pk)


@shared_task(name="experiments.advance_open")
def advance_open_task() -> list[int]:
    """Advance every running experiment (the safety net behind the per-task signal)."""
    from .services import advance_open_experiments

    return advance_open_experiments()
