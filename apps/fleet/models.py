"""The workers of a deployment, as they report themselves: one row per worker (its Celery hostname), the queues it
consumes and the GPU memory it has, renewed every FTSTUDIO_WORKER_BEAT_SECONDS while it runs."""

from __future__ import annotations

from django.db import models


class WorkerBeat(models.Model):
    hostname = models.CharField(max_length=200, unique=True)
    queues = models.JSONField(default=list, help_text="the Celery queues this worker consumes")
    gpu_count = models.PositiveSmallIntegerField(default=0)
    gpu_memory_gb = models.PositiveIntegerField(default=0, help_text="memory of its smallest GPU, GB (0: CPU only)")
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField()

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return f"{self.hostname} ({', '.join(self.queues)})"
