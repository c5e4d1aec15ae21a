from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .models import WorkerBeat


def live_workers(now=None):
    now = now or timezone.now()
    return WorkerBeat.objects.filter(beat_at__gte=now - timedelta(seconds=settings.FTSTUDIO_WORKER_BEAT_SECONDS * 3))


def workers_serving(queue: str, now=None) -> list[WorkerBeat]:
    return [w for w in live_workers(now) if queue in w.queues]


def queue_warning(queue: str, now=None) -> str:
    """ "" when a live worker consumes ``queue``, else what to do about it (shown with the launch estimate)."""
    if workers_serving(queue, now):
        return ""
    return (
        f"No running worker serves queue {queue}: the run will wait in the queue until one starts "
        f"(`celery -A ftstudio worker -Q {queue} ...` on a node with enough GPU memory)."
    )
