from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .models import WorkerBeat


def live_workers(now=None):
    now = now or timezone.now()
    return WorkerBeat.objects.filter(beat_at__gte=now - timedelta(seconds=settings.FTSTUDIO_WORKER_BEAT_SECONDS * 3))


def worker_silence(queue: str | None = None, *, since=None, now=None) -> str:
    """ "" while a worker consuming ``queue`` (any queue when None) beats; else "No worker has answered for N minutes."
    counted from the last beat of such a worker, or from ``since`` (when the job was queued) if none ever beat. Quiet
    in the first minute: a worker may be starting."""
    now = now or timezone.now()
    beats = [w.beat_at for w in WorkerBeat.objects.all() if queue is None or queue in w.queues]
    if any(beat >= now - timedelta(seconds=settings.FTSTUDIO_WORKER_BEAT_SECONDS * 3) for beat in beats):
        return ""
    last = max(beats, default=None) or since
    if last is None:
        return "No worker has answered yet."
    minutes = int((now - last).total_seconds() // 60)
    if minutes < 1:
        return ""
    return f"No worker has answered for {minutes} minute{'' if minutes == 1 else 's'}."


def job_silence(queue: str, job) -> str:
    """``worker_silence`` for a queued or running job (a run, an evaluation), counted from its last sign of life."""
    return worker_silence(queue, since=job.heartbeat_at or job.enqueued_at or job.created_at)


class SilenceWatch:
    """For the ``--wait`` loops of management commands: ``news()`` is the silence line when it changed (one line a
    minute while no worker answers), else ""."""

    def __init__(self, queue: str | None = None, since=None) -> None:
        self.queue, self.since, self.said = queue, since or timezone.now(), ""

    def news(self) -> str:
        line = worker_silence(self.queue, since=self.since)
        if line == self.said:
            return ""
        self.said = line
        return f"{line} Still waiting: start a worker, or look at its log for why it stopped." if line else ""


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
