"""The Celery app. Workers run `celery -A ftstudio worker -Q gpu,default`.

Queue `gpu` carries training and generation (one task at a time per GPU); queue `default` the
rest (quality reports, housekeeping). Routing lives here so callers only call `.delay(pk)`.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ftstudio.settings")

app = Celery("ftstudio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_routes = {
    "runs.train_run": {"queue": "gpu"},
    "evaluations.generate_outputs": {"queue": "gpu"},
}
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_reaper(sender, **kwargs):
    from django.conf import settings

    sender.add_periodic_task(settings.FTSTUDIO_REAPER_INTERVAL, sender.signature("runs.reap_stale_runs"),
                             name="reap stale runs")


@app.task(name="ftstudio.ping")
def ping() -> str:
    """Round-trips through the broker: `make run` and the health check use it to prove a worker answers."""
    return "pong"
