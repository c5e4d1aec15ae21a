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

import os

from celery import Celery
from celery.signals import worker_shutting_down

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ftstudio.settings")

app = Celery("ftstudio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_routes = {
    "runs.train_run": {"queue": "gpu"},
    "evaluations.generate_outputs": {"queue": "gpu"},
    "prompts.score_prompt_version": {"queue": "gpu"},
}
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_reaper(sender, **kwargs):
    from django.conf import settings

    sender.add_periodic_task(settings.FTSTUDIO_REAPER_INTERVAL, sender.signature("runs.reap", queue="default"),
                             name="reap stranded runs and evaluations")
    sender.add_periodic_task(settings.FTSTUDIO_REAPER_INTERVAL, sender.signature("webhooks.send_due", queue="default"),
                             name="send webhook deliveries that are due (retries)")


@worker_shutting_down.connect
def _stop_long_tasks_at_a_checkpoint(sig=None, how=None, **kwargs):
    from apps.runs.leases import shutdown_requested

    shutdown_requested.set()


@app.task(name="ftstudio.ping")
def ping() -> str:
    """Round-trips through the broker: `make run` and the health check use it to prove a worker answers."""
    return "pong"
