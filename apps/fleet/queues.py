"""Queues by hardware. A base model states the GPU memory it needs (`BaseModel.min_gpu_gb`; 0: any worker, CPU
included). Training and generation for it go to the smallest GPU tier that has that much memory
(FTSTUDIO_GPU_TIERS, default 24,48,80 -> queues `gpu-24g`, `gpu-48g`, `gpu-80g`); with no requirement they go to
queue `gpu`, which every training worker consumes (the embedded `make run` worker too). A worker subscribes to the
tiers it can serve (`-Q gpu,gpu-24g` on a 24 GB card, `-Q gpu,gpu-24g,gpu-48g,gpu-80g` on an 80 GB one)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings

DEFAULT_QUEUE = "gpu"


class NoQueueError(ValueError):
    pass


def queue_for(min_gpu_gb: int) -> str:
    """The queue of a job needing ``min_gpu_gb`` GB of GPU memory; NoQueueError when no tier is that large."""
    if not min_gpu_gb:
        return DEFAULT_QUEUE
    for tier in sorted(settings.FTSTUDIO_GPU_TIERS):
        if tier >= min_gpu_gb:
            return f"gpu-{tier}g"
    raise NoQueueError(
        f"No GPU tier has {min_gpu_gb} GB (tiers: {', '.join(f'{t} GB' for t in settings.FTSTUDIO_GPU_TIERS)}); "
        "an administrator can add a larger tier and run a worker for it."
    )


# Which queue a task's job goes to, by task name: {task name: function of the job's primary key -> its queue}. The
# apps that own such tasks (runs, evaluations: above this one) fill it in their AppConfig.ready.
TASK_QUEUES: dict[str, Callable[[object], str]] = {}


def route(name, args, kwargs, options, task=None, **kw):
    """Celery router (ftstudio/celery.py): training and generation go to the queue their model's hardware needs."""
    queue_of = TASK_QUEUES.get(name)
    if queue_of is not None and not options.get("queue"):
        pk = args[0] if args else next(iter(kwargs.values()), None)
        try:
            return {"queue": queue_of(pk)}
        except NoQueueError:
            return {"queue": DEFAULT_QUEUE}  # refused at launch; an old row keeps its old route
    return None
