"""The Celery app. Workers run `celery -A ftstudio worker -Q gpu,default`.

Queue `gpu` carries training and generation (one task at a time per GPU); queue `default` the
rest (quality reports, housekeeping). Routing lives here so callers only call `.delay(pk)`.

The reaper (`runs.reap`: resumes runs and evaluations whose worker died, re-sends lost queued messages)
is scheduled here, and only a worker started with `-B` (embedded beat) runs the schedule: the one
embedded worker of `make run`, `worker-cpu` in docker-compose. Run exactly one such worker; staff see
a banner when no reaper has run for FTSTUDIO_REAPER_ALARM_SECONDS.

A warm shutdown (SIGTERM) sets `apps.runs.leases.shutdown_requested`: a training task running in the
worker's main process (`--pool solo`, as `worker-gpu` runs) stops at its next step with a checkpoint and
hands its run back without spending an attempt; generation hands its evaluation back after the batch.
"""

import functools
import os

from celery import Celery
from celery.signals import (
    celeryd_after_setup,
    worker_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ftstudio.settings")

app = Celery("ftstudio")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Training and generation go to `gpu`, or to the GPU tier their base model needs (`gpu-24g`, ...: apps/fleet/queues.py);
# scoring a prompt version generates on the base model, on `gpu`.
app.conf.task_routes = ("apps.fleet.queues.route", {"prompts.score_prompt_version": {"queue": "gpu"}})
app.autodiscover_tasks()


def send_after_commit(task, *args) -> None:
    """Send ``task(*args)`` once the current transaction commits (at once outside one): a worker never
    reloads a row that is not committed yet, and a rolled-back write sends nothing. Every service enqueues
    through this."""
    from django.db import transaction

    transaction.on_commit(functools.partial(task.delay, *args))


@app.on_after_finalize.connect
def _schedule_reaper(sender, **kwargs):
    from django.conf import settings

    sender.add_periodic_task(
        settings.FTSTUDIO_REAPER_INTERVAL,
        sender.signature("runs.reap", queue="default"),
        name="reap stranded runs and evaluations",
    )
    sender.add_periodic_task(
        settings.FTSTUDIO_REAPER_INTERVAL,
        sender.signature("webhooks.send_due", queue="default"),
        name="send webhook deliveries that are due (retries)",
    )
    sender.add_periodic_task(
        settings.FTSTUDIO_REAPER_INTERVAL,
        sender.signature("experiments.advance_open", queue="default"),
        name="advance running data experiments",
    )
    sender.add_periodic_task(
        3600.0,
        sender.signature("api.delete_expired_completions", queue="default"),
        name="delete stored completions past their project's retention period",
    )
    sender.add_periodic_task(
        86400.0,
        sender.signature("traffic.measure_drift_all", queue="default"),
        name="measure drift of served runs against their training data",
    )


@worker_init.connect
def _check_artifact_store(sender=None, **kwargs):
    """Wrong credentials or a missing bucket stop the worker now, with the variable to fix (apps/runs/artifacts.py)."""
    if getattr(sender, "app", app) is not app:  # another Celery app in this interpreter (tests/broker_stress_app.py)
        return
    from apps.runs.artifacts import check_or_exit

    check_or_exit("worker")


_beat: dict = {}


@celeryd_after_setup.connect
def _note_queues(sender, instance, **kwargs):
    if instance.app is not app:
        return
    _beat["hostname"], _beat["queues"] = sender, sorted(instance.app.amqp.queues.consume_from)


@worker_ready.connect
def _start_beating(**kwargs):
    """A WorkerBeat row (apps/fleet): which queues this worker serves, so a launch can warn when none serves its
    queue."""
    from django.conf import settings

    from apps.fleet.services import start_beating

    if "hostname" in _beat:
        _beat["stop"] = start_beating(
            hostname=_beat["hostname"], queues=_beat["queues"], interval=settings.FTSTUDIO_WORKER_BEAT_SECONDS
        )


@worker_shutdown.connect
def _stop_beating(**kwargs):
    from apps.fleet.services import forget

    if "stop" in _beat:
        _beat["stop"].set()
        try:
            forget(hostname=_beat["hostname"])
        except Exception:  # the database is gone too: the row goes stale by itself
            pass


@worker_shutting_down.connect
def _stop_long_tasks_at_a_checkpoint(sig=None, how=None, **kwargs):
    from apps.runs.leases import shutdown_requested

    shutdown_requested.set()


@app.task(name="ftstudio.ping")
def ping() -> str:
    """Round-trips through the broker: `make run` and the health check use it to prove a worker answers."""
    return "pong"
