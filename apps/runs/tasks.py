"""Celery tasks of runs. `runs.train_run` is routed to queue `gpu` (ftstudio/celery.py); `runs.reap` (queue
`default`) is scheduled every FTSTUDIO_REAPER_INTERVAL seconds by the one worker started with `-B`.

Tasks import their service inside the function (launching, execution and recovery import this module to enqueue)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="runs.train_run", acks_late=True, reject_on_worker_lost=True)
def train_run(run_pk: int) -> str:
    """Train (or resume) one run; a duplicate delivery finds it held by a live worker or finished and does nothing."""
    from .execution import execute_run

    return execute_run(run_pk)


@shared_task(name="runs.join_distributed_run", acks_late=False)
def join_distributed_run(run_pk: int, endpoint: str, rdzv_id: str, resume_step: int = 0) -> str:
    """Take part in a run on several nodes hosted by another worker (routed to the run's queue)."""
    from .execution import execute_join

    return execute_join(run_pk, endpoint, rdzv_id, resume_step)


@shared_task(name="runs.reap")
def reap() -> dict[str, list[int]]:
    """Re-send runs, exports and imports whose worker is gone, and queued ones whose message was lost."""
    from .recovery import reap as reap_now

    return reap_now()


@shared_task(name="runs.export_run", queue="default", acks_late=True, reject_on_worker_lost=True)
def export_run(export_pk: int) -> str:
    """Write one export of a run (adapter, merged model or GGUF) into the artifact store; queue `default`."""
    from .exports import execute_export

    return execute_export(export_pk)
