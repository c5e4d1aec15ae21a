"""Queues by hardware. A base model states the GPU memory it needs (`BaseModel.min_gpu_gb`; 0: any worker, CPU
included). Training and generation for it go to the smallest GPU tier that has that much memory
(FTSTUDIO_GPU_TIERS, default 24,48,80 -> queues `gpu-24g`, `gpu-48g`, `gpu-80g`); with no requirement they go to
queue `gpu`, which every training worker consumes (the embedded `make run` worker too). A worker subscribes to the
tiers it can serve (`-Q gpu,gpu-24g` on a 24 GB card, `-Q gpu,gpu-24g,gpu-48g,gpu-80g` on an 80 GB one)."""

from __future__ import annotations

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


def run_queue(run_pk) -> str:
    from apps.runs.models import Run

    row = Run.objects.filter(pk=run_pk).values_list("estimate", "base_model__min_gpu_gb").first()
    if row is None:
        return DEFAULT_QUEUE
    estimate, need = row
    # the card the launch estimate chose (apps/runs/launching.plan_memory); older runs: the model's requirement
    return queue_for((estimate or {}).get("gpu_gb") or need or 0)


def evaluation_queue(evaluation_pk) -> str:
    """An evaluation generates with every candidate's base model: the largest requirement decides."""
    from apps.evaluations.models import Evaluation

    evaluation = Evaluation.objects.filter(pk=evaluation_pk).first()
    if evaluation is None:
        return DEFAULT_QUEUE
    needs = [evaluation.base_model.min_gpu_gb if evaluation.base_model_id else 0]
    needs += [c.run.base_model.min_gpu_gb for c in evaluation.candidates.select_related("run__base_model") if c.run_id]
    return queue_for(max(needs))


def route(name, args, kwargs, options, task=None, **kw):
    """Celery router (ftstudio/celery.py): training and generation go to the queue their model's hardware needs."""
    run_tasks = {"runs.train_run", "runs.join_distributed_run"}
    if name in run_tasks | {"evaluations.generate_outputs"} and not options.get("queue"):
        pk = args[0] if args else next(iter(kwargs.values()), None)
        try:
            return {"queue": run_queue(pk) if name in run_tasks else evaluation_queue(pk)}
        except NoQueueError:
            return {"queue": DEFAULT_QUEUE}  # refused at launch; an old row keeps its old route
    return None
