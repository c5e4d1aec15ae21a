"""Base models, fine-tuning runs and their metrics.

The Run row is the truth about a run: status, heartbeat and attempts decide whether a (possibly
redelivered) task may start or resume it.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Project
from apps.datasets.models import DatasetVersion, PreferenceVersion
from ftstudio.models import TimeStamped

from .leases import LeaseHolder


class SourceKind(models.TextChoices):
    LOCAL = "local", "Local directory (Hugging Face format)"
    GGUF = "gguf", "GGUF file"
    HUB = "hub", "Hugging Face Hub id (online servers only)"


class BaseModel(TimeStamped):
    """A registered base model any project may fine-tune."""

    name = models.SlugField(max_length=80, unique=True)
    display_name = models.CharField(max_length=120, blank=True)
    source_kind = models.CharField(max_length=8, choices=SourceKind.choices)
    source = models.CharField(max_length=500, help_text="directory, .gguf path, or Hub id")
    revision = models.CharField(max_length=80, blank=True)
    architecture = models.CharField(max_length=80, blank=True)
    parameter_count = models.BigIntegerField(default=0)
    context_length = models.PositiveIntegerField(default=2048)
    has_chat_template = models.BooleanField(default=False)
    shape = models.JSONField(
        default=dict,
        blank=True,
        help_text="layers, widths, heads and vocabulary from its config.json: what the memory estimate counts "
        "(worker/memory.py Shape)",
    )
    min_gpu_gb = models.PositiveIntegerField(
        default=0,
        help_text="GPU memory its training needs, GB (0: any worker, "
        "CPU included); picks the worker queue (apps/fleet/queues.py)",
    )
    public_id = models.CharField(
        max_length=200,
        blank=True,
        help_text="the model's public id (a Hugging Face Hub id "
        "such as HuggingFaceTB/SmolLM2-135M-Instruct): exports name the base model by it",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.display_name or self.name

    @property
    def portable_id(self) -> str:
        """How exports name this base model: its public id, else its Hub id, else its name here (never a path)."""
        return self.public_id or (self.source if self.source_kind == SourceKind.HUB else self.name)


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    PAUSED = "paused", "Paused"


class TrainingMethod(models.TextChoices):
    """OpenAI's fine-tuning methods: learn the ideal outputs, learn what reviewers preferred, or explore and be
    rewarded by graders."""

    SUPERVISED = "supervised", "Learn from examples"
    DPO = "dpo", "Learn from preferences"
    REINFORCEMENT = "reinforcement", "Learn from graders"


class Run(LeaseHolder, TimeStamped):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="runs")
    name = models.CharField(max_length=120, blank=True)
    dataset_version = models.ForeignKey(
        DatasetVersion,
        on_delete=models.PROTECT,
        related_name="runs",
        help_text="the examples learnt from (supervised), the prompts explored (reinforcement), or the version a "
        "preference version is anchored to (dpo); its test split judges the run",
    )
    method = models.CharField(max_length=16, choices=TrainingMethod.choices, default=TrainingMethod.SUPERVISED)
    preference_version = models.ForeignKey(
        PreferenceVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="runs",
        help_text="dpo only: the frozen pairs trained on",
    )
    start_from = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="continued_by",
        help_text="a finished run whose adapter this run starts from (and, for dpo, the reference model); "
        "empty = the base model",
    )
    graders = models.JSONField(
        default=list, blank=True, help_text="reinforcement only: grader objects in OpenAI's shapes, each with a weight"
    )
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="runs")
    preset = models.CharField(max_length=16, blank=True)
    hyperparameters = models.JSONField(default=dict, help_text="the worker's TrainConfig fields")
    seed = models.PositiveIntegerField(default=42)
    estimate = models.JSONField(default=dict, blank=True, help_text="tokens, steps, seconds, memory before launch")
    devices = models.PositiveSmallIntegerField(
        default=1,
        help_text="processes per node: GPUs (DDP with nccl), or CPU processes (gloo) on a CPU worker; "
        "the batch size is split evenly over devices x nodes (worker/distributed.py)",
    )
    nodes = models.PositiveSmallIntegerField(
        default=1, help_text="workers of the run's queue that train it together (torchrun c10d rendezvous)"
    )

    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    pause_requested = models.BooleanField(
        default=False,
        help_text="stop at the next step end with a checkpoint and "
        "wait (status paused) until resumed; /v1/fine_tuning/jobs/{id}/pause",
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker_id = models.CharField(max_length=200, blank=True, help_text="the claim's owner (host:pid:start:token)")
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="when the last task message was sent")
    phase = models.CharField(max_length=24, blank=True, help_text="loading, training, validating, saving")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    restarts = models.JSONField(
        default=list, blank=True, help_text="each later attempt of a started run: attempt, step it resumed from, at"
    )
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    checkpoint_path = models.CharField(max_length=500, blank=True)
    adapter_path = models.CharField(max_length=500, blank=True)
    final_train_loss = models.FloatField(null=True, blank=True)
    final_val_loss = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    log_tail = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["project", "status", "-created_at"]),
            models.Index(fields=["status", "heartbeat_at"]),
            models.Index(fields=["status", "enqueued_at"]),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(step__gte=0), name="run_step_non_negative"),
        ]

    def __str__(self) -> str:
        return self.name or f"Run #{self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("run_detail", kwargs={"slug": self.project.slug, "pk": self.pk})

    @property
    def is_finished(self) -> bool:
        return self.status in {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}

    @property
    def resumable(self) -> bool:
        """Failed, paused, or stranded (queued or running) with no live worker: may be resumed from its last
        checkpoint."""
        if self.status in {RunStatus.FAILED, RunStatus.PAUSED}:
            return True
        if self.status == RunStatus.QUEUED:  # stranded: its message is older than the re-send bound
            sent = self.enqueued_at or self.created_at
            bound = timedelta(seconds=settings.FTSTUDIO_REQUEUE_AFTER_SECONDS)
            return not self.cancel_requested and sent is not None and timezone.now() - sent > bound
        return self.status == RunStatus.RUNNING and self.owner_gone()

    # --- state transitions (queued -> running -> succeeded | failed | cancelled) -------------------------
    # ``rows``: the lease's owner-filtered queryset inside a task (``Lease.rows()``): a worker whose run was
    # taken over writes nothing. Without it the write goes to this row (a claim under select_for_update, a
    # page's cancel or resume). Each returns whether the row was written.
    def mark_running(self, *, owner: str, now=None) -> bool:
        """Claimed by ``owner``: one more attempt, loading first."""
        now = now or timezone.now()
        return self.write(
            status=RunStatus.RUNNING,
            attempts=self.attempts + 1,
            heartbeat_at=now,
            worker_id=owner,
            phase="loading",
            started_at=self.started_at or now,
        )

    def mark_succeeded(self, *, rows=None, **results) -> bool:
        """Trained to the end: ``results`` are the final step, losses, adapter path, log tail."""
        now = timezone.now()
        return self.write(rows, status=RunStatus.SUCCEEDED, finished_at=now, heartbeat_at=now, phase="", **results)

    def mark_failed(self, error: str, *, rows=None, **extra) -> bool:
        return self.write(rows, status=RunStatus.FAILED, finished_at=timezone.now(), error=error[:2000], **extra)

    def mark_cancelled(self, *, rows=None, **extra) -> bool:
        return self.write(rows, status=RunStatus.CANCELLED, finished_at=timezone.now(), **extra)

    def mark_queued(self, *, rows=None, **extra) -> bool:
        """Waiting for a worker again (resumed by a PM, or handed back by a worker shutting down); a message is
        sent by the caller."""
        return self.write(rows, status=RunStatus.QUEUED, worker_id="", phase="", enqueued_at=timezone.now(), **extra)

    def mark_paused(self, *, rows, log_tail: str) -> bool:
        """Stopped at a checkpoint because a PM paused it: waits for ``resume_paused_run``; the attempt is not
        counted."""
        return self.write(
            rows,
            status=RunStatus.PAUSED,
            worker_id="",
            phase="",
            heartbeat_at=None,
            attempts=F("attempts") - 1,
            log_tail=log_tail,
        )

    def mark_handed_back(self, *, rows, log_tail: str) -> bool:
        """A worker shutting down stopped at a checkpoint: queued again, and this attempt is not counted."""
        return self.mark_queued(rows=rows, heartbeat_at=None, attempts=F("attempts") - 1, log_tail=log_tail)


class RunMetric(models.Model):
    """One logged point of a run: training metrics at a step, or validation loss at an epoch end."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metrics")
    step = models.PositiveIntegerField()
    epoch = models.FloatField(default=0)
    train_loss = models.FloatField(null=True, blank=True)
    val_loss = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    train_accuracy = models.FloatField(null=True, blank=True, help_text="share of learnt tokens predicted right")
    val_accuracy = models.FloatField(null=True, blank=True)
    reward_margin = models.FloatField(null=True, blank=True, help_text="dpo: chosen minus rejected implicit reward")
    preference_accuracy = models.FloatField(
        null=True, blank=True, help_text="dpo: share of held-out pairs where the preferred reply scores higher"
    )
    rewards = models.JSONField(
        default=dict, blank=True, help_text="reinforcement: mean reward per grader name, and 'total'"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step"]
        indexes = [models.Index(fields=["run", "step"])]


class ExportFormat(models.TextChoices):
    ADAPTER = "adapter", "LoRA adapter (PEFT)"
    MERGED = "merged", "Merged model (safetensors)"
    GGUF = "gguf", "GGUF for llama.cpp / Ollama"


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Exporting"
    SUCCEEDED = "succeeded", "Ready"
    FAILED = "failed", "Failed"


class RunExport(TimeStamped):
    """One export of a succeeded run's adapter (task ``runs.export_run`` on queue ``default``); the zip lies in the
    artifact store (``file_path``: its key; an absolute path for rows from before) and is downloaded through the
    run page."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=8, choices=ExportFormat.choices)
    quant = models.CharField(max_length=8, blank=True, help_text="GGUF only: f16 or q8_0")
    status = models.CharField(max_length=16, choices=ExportStatus.choices, default=ExportStatus.QUEUED)
    file_path = models.CharField(max_length=500, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["run", "format", "quant", "status"])]
        constraints = [
            models.CheckConstraint(condition=models.Q(quant__in=["", "f16", "q8_0"]), name="run_export_known_quant"),
            models.CheckConstraint(
                condition=models.Q(format="gguf") | models.Q(quant=""), name="run_export_quant_gguf_only"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_format_display()}{f' ({self.quant})' if self.quant else ''} of {self.run}"

    @property
    def is_pending(self) -> bool:
        return self.status in {ExportStatus.QUEUED, ExportStatus.RUNNING}

    @property
    def file_name(self) -> str:
        return self.file_path.rsplit("/", 1)[-1] if self.file_path else ""

    # a row's own state changes (TimeStamped.write); the task holds the export's JobLease meanwhile (apps/runs/jobs.py)
    def _pending_rows(self):
        return RunExport.objects.filter(pk=self.pk, status__in=[ExportStatus.QUEUED, ExportStatus.RUNNING])

    def mark_running(self) -> bool:
        return self.write(self._pending_rows(), status=ExportStatus.RUNNING, started_at=timezone.now())

    def mark_succeeded(self, *, file_path: str, size_bytes: int) -> bool:
        return self.write(
            self._pending_rows(),
            status=ExportStatus.SUCCEEDED,
            file_path=file_path,
            size_bytes=size_bytes,
            finished_at=timezone.now(),
        )

    def mark_failed(self, error: str) -> bool:
        """Only a pending export fails: a finished one keeps its file or its first reason."""
        return self.write(
            self._pending_rows(), status=ExportStatus.FAILED, error=error[:2000], finished_at=timezone.now()
        )


class JobLease(LeaseHolder, models.Model):
    """The lease of one background job (automatic checks, the judge, an export: `apps/runs/jobs.py`), so that a job
    whose worker was killed is sent again by the reaper like a run: queued (``enqueued_at``) or running (owner id,
    heartbeat, attempts). The row goes when the job ends."""

    kind = models.CharField(max_length=16, help_text="checks, judge, export")
    object_pk = models.PositiveBigIntegerField(help_text="the primary key the job's task takes")
    state = models.CharField(max_length=8, default="queued", help_text="queued or running")
    worker_id = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "object_pk"], name="job_lease_one_per_job")]
        indexes = [models.Index(fields=["state", "kind"])]

    def __str__(self) -> str:
        return f"{self.kind} job {self.object_pk} ({self.state})"


class ReaperBeat(models.Model):
    """When an app's periodic recovery pass last ran (one row per pass, ftstudio/queueing.py RECOVERY_PASSES): the
    staff banner alarms when one is old or missing."""

    name = models.CharField(max_length=40, unique=True)
    beat_at = models.DateTimeField()
    requeued = models.JSONField(default=dict, blank=True, help_text="what the last pass re-sent")

    def __str__(self) -> str:
        return f"{self.name} at {self.beat_at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def record(cls, name: str, requeued: dict, now=None) -> dict:
        """Note that the pass ``name`` ran (and what it re-sent); returns ``requeued``."""
        cls.objects.update_or_create(name=name, defaults={"beat_at": now or timezone.now(), "requeued": requeued})
        return requeued
