"""A worker's own beat: written when it is ready and every FTSTUDIO_WORKER_BEAT_SECONDS by a daemon thread
(ftstudio/celery.py starts it), removed at a warm shutdown."""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections
from django.utils import timezone

from .models import WorkerBeat

log = logging.getLogger(__name__)


def gpu_memory() -> tuple[int, int]:
    """(count, GB of the smallest) of this node's CUDA devices; (0, 0) without any."""
    try:
        import torch

        if not torch.cuda.is_available():
            return 0, 0
        count = torch.cuda.device_count()
        smallest = min(torch.cuda.get_device_properties(i).total_memory for i in range(count))
        return count, int(smallest / 2**30)
    except Exception:  # no driver: a CPU worker
        return 0, 0


def beat(*, hostname: str, queues: list[str], gpus: tuple[int, int] | None = None, started=None) -> WorkerBeat:
    count, memory = gpus if gpus is not None else gpu_memory()
    now = timezone.now()
    return WorkerBeat.objects.update_or_create(
        hostname=hostname,
        defaults={
            "queues": sorted(queues),
            "gpu_count": count,
            "gpu_memory_gb": memory,
            "beat_at": now,
            "started_at": started or now,
        },
    )[0]


def forget(*, hostname: str) -> None:
    WorkerBeat.objects.filter(hostname=hostname).delete()


def start_beating(*, hostname: str, queues: list[str], interval: float) -> threading.Event:
    """Beat now and then every ``interval`` seconds until the returned event is set."""
    stop = threading.Event()
    gpus, started = gpu_memory(), timezone.now()

    def loop():
        while not stop.is_set():
            try:
                beat(hostname=hostname, queues=queues, gpus=gpus, started=started)
            except Exception:  # the database is away for a moment: the next beat tries again
                log.exception("worker beat failed")
            finally:
                close_old_connections()
            stop.wait(interval)

    threading.Thread(target=loop, name="worker-beat", daemon=True).start()
    return stop
