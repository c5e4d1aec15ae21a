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
        f"No running worker serves queue {queue}: the run will wait in the queue until a worker for it starts "
        "on a machine with enough GPU memory."
    )


def scale_warning(queue: str, devices: int, nodes: int, now=None) -> str:
    """ "" when enough live workers of ``queue`` can run a run on ``devices`` devices x ``nodes`` nodes, else why not
    (shown with the launch estimate). A GPU worker runs one process per GPU, so it needs ``devices`` GPUs; a CPU-only
    worker (gpu_count 0) runs ``devices`` gloo processes on its cores: it can, slowly (testing, spare cores)."""
    if devices == 1 and nodes == 1:
        return ""
    serving = workers_serving(queue, now)
    if not serving:
        return ""  # queue_warning says it
    able = [w for w in serving if w.gpu_count >= devices or w.gpu_count == 0]
    words = []
    if not able:
        most = max(w.gpu_count for w in serving)
        words.append(
            f"No live worker of queue {queue} has {devices} GPUs (the most is {most}): the run would fail on start. "
            f"Ask for at most {most} devices, or start a worker on a node with {devices} GPUs."
        )
    elif all(w.gpu_count == 0 for w in able):
        words.append(
            f"The live workers of queue {queue} have no GPU: the run trains as {devices} CPU processes (gloo) "
            "per node, which share the node's cores (useful for testing, not faster)."
        )
    if nodes > 1 and len(able) < nodes:
        words.append(
            f"The run asks for {nodes} nodes but {len(able)} live worker(s) of queue {queue} can take part: it starts "
            f"when {nodes} are free, and fails if they do not join within 5 minutes."
        )
    return " ".join(words)
