"""Celery tasks of runs. `runs.train_run` is routed to queue `gpu` (ftstudio/celery.py); `runs.reap_stale_runs`
is scheduled periodically there."""

from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(name="runs.train_run", acks_late=True, reject_on_worker_lost=True)
def train_run(run_pk: int) -> str:
    """Train (or resume) one run; a duplicate delivery finds it running or finished and does nothing."""
    return services.execute_run(run_pk)


@shared_task(name="runs.reap_stale_runs")
def reap_stale_runs() -> list[int]:
    """Re-queue runs whose worker stopped sending heartbeats (resumed from their last checkpoint)."""
    return services.reap_stale_runs()


@shared_task(name="runs.export_run", queue="default", acks_late=True, reject_on_worker_lost=True)
def export_run(export_pk: int) -> str:
    """Write one export of a run (adapter, merged model or GGUF) under MEDIA_ROOT; queue `default`."""
    from . import exports

    return exports.execute_export(export_pk)
