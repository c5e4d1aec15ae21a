"""The Celery app. Workers run `celery -A ftstudio worker -Q gpu,default`.

Queue `gpu` carries training and generation (one task at a time per GPU); queue `default` the
rest (quality reports, housekeeping). Routing lives here so callers only call `.delay(pk)`.

Each app's recovery pass (`runs.reap`, `evaluations.reap`, `prompts.reap`, `api.reap`: ftstudio/queueing.py
RECOVERY_PASSES; each resumes its own work whose worker died and re-sends its lost queued messages) is scheduled
here by task name, and only a worker started with `-B` (embedded beat) runs the schedule: the one embedded worker
of `make run`, `worker-cpu` in docker-compose. Run exactly one such worker; staff see a banner when a pass has not
run for FTSTUDIO_REAPER_ALARM_SECONDS.

This module imports no app: the worker's own hooks (the artifact store check, the WorkerBeat row, the warm
shutdown) are connected by the apps that own them, in their AppConfig.ready (apps/runs/worker_hooks.py,
apps/fleet/worker_hooks.py), which a worker runs before it sends those signals.

A warm shutdown (SIGTERM) sets `apps.runs.leases.shutdown_requested`: a training task running in the
worker's main process (`--pool solo`, as `worker-gpu` runs) stops at its next step with a checkpoint and
hands its run back without spending an attempt; generation hands its evaluation back after the batch.
"""

import os

from celery import Celery

from ftstudio.queueing import RECOVERY_PASSES, send_after_commit  # noqa: F401 (send_after_commit: older callers)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ftstudio.settings")

app = Celery("ftstudio")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Training and generation go to `gpu`, or to the GPU tier their base model needs (`gpu-24g`, ...: apps/fleet/queues.py);
# scoring a prompt version generates on the base model, on `gpu`.
app.conf.task_routes = ("apps.fleet.queues.route", {"prompts.score_prompt_version": {"queue": "gpu"}})
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_reaper(sender, **kwargs):
    from django.conf import settings

    for beat, task_name in RECOVERY_PASSES.items():
        sender.add_periodic_task(
            settings.FTSTUDIO_REAPER_INTERVAL,
            sender.signature(task_name, queue="default"),
            name=f"recover stranded work: {beat}",
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


@app.task(name="ftstudio.ping")
def ping() -> str:
    """Round-trips through the broker: `make run` and the health check use it to prove a worker answers."""
    return "pong"
