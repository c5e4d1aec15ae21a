"""Runs' part in a Celery worker's life, connected in RunsConfig.ready. A worker calls ``django.setup()`` while it
loads its task modules (Celery's Django fixup, on ``import_modules``), before it sends ``worker_init``, so these
are connected by then."""

from __future__ import annotations


def check_artifact_store(sender=None, **kwargs) -> None:
    """``worker_init``: wrong credentials or a missing bucket stop the worker now, with the variable to fix."""
    from ftstudio.celery import app

    if getattr(sender, "app", app) is not app:  # another Celery app in this interpreter (tests/broker_stress_app.py)
        return
    from .artifacts import check_or_exit

    check_or_exit("worker")


def stop_long_tasks_at_a_checkpoint(sig=None, how=None, **kwargs) -> None:
    """``worker_shutting_down`` (a warm shutdown): a training task stops at its next step with a checkpoint and
    hands its run back without spending an attempt; generation hands its evaluation back after the batch."""
    from .leases import shutdown_requested

    shutdown_requested.set()
