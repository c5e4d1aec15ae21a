"""API keys: one project, one user (the key acts with that user's role in that project only)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.accounts.models import Project
from ftstudio.models import TimeStamped


class ApiKey(TimeStamped):
    """Only a SHA-256 of the key is stored (keys are 256 random bits, so a fast hash is enough);
    ``prefix`` is its first characters, shown so people can tell keys apart."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="api_keys")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=80, blank=True)
    prefix = models.CharField(max_length=16)
    hashed = models.CharField(max_length=64, unique=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.name or 'key'} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at", "updated_at"])


def _public_id(prefix: str) -> str:
    import secrets

    return f"{prefix}-{secrets.token_hex(12)}"


def new_file_id() -> str:
    return _public_id("file")


def new_job_id() -> str:
    return _public_id("ftjob")


class ApiFile(TimeStamped):
    """A file uploaded through ``POST /v1/files`` (``purpose=fine-tune``): kept as uploaded in default_storage
    (MEDIA_ROOT/api-files/, or the artifact bucket); its lines become examples of the project when a job uses it."""

    public_id = models.CharField(max_length=40, unique=True, default=new_file_id)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="api_files")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=32)
    bytes = models.BigIntegerField(default=0)
    path = models.CharField(max_length=500, help_text="relative to MEDIA_ROOT")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.filename})"


class JobStage(models.TextChoices):
    """Where a job is before its run exists; afterwards its status is the run's (``fine_tuning.job_status``)."""

    VALIDATING = "validating_files", "Validating files"
    FAILED = "failed", "Failed validation"
    LAUNCHED = "launched", "Launched (see the run)"


class FineTuningJob(TimeStamped):
    """An OpenAI fine-tuning job: the request as sent, and the Run it became. A run launched in the browser gets
    one too the first time the API lists the project's jobs, so the API sees every run."""

    public_id = models.CharField(max_length=40, unique=True, default=new_job_id)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="fine_tuning_jobs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    run = models.OneToOneField(
        "runs.Run", null=True, blank=True, on_delete=models.CASCADE, related_name="fine_tuning_job"
    )
    stage = models.CharField(max_length=20, choices=JobStage.choices, default=JobStage.VALIDATING)
    model = models.CharField(max_length=200, help_text="the base model's name, as the request gave it")
    training_file = models.CharField(max_length=40, blank=True)
    validation_file = models.CharField(max_length=40, blank=True)
    suffix = models.CharField(max_length=64, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    method = models.JSONField(default=dict, blank=True, help_text="OpenAI's method object, hyperparameters resolved")
    error = models.JSONField(null=True, blank=True, help_text="{code, message, param} when validation failed")
    files_report = models.JSONField(default=dict, blank=True, help_text="what validating the files imported")
    overrides = models.JSONField(default=dict, blank=True, help_text="the run's hyperparameter overrides (launch_run)")
    finished_at = models.DateTimeField(null=True, blank=True, help_text="validation failures only")
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_hash = models.CharField(max_length=64, blank=True, help_text="sha256 of the request body, for retries")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "-created_at", "-id"]),
            models.Index(fields=["project", "request_hash", "created_at"]),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="one_job_per_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return self.public_id

    # a row's own state changes (TimeStamped.write), each only from validating: a second delivery changes nothing
    def _validating(self):
        return FineTuningJob.objects.filter(pk=self.pk, stage=JobStage.VALIDATING)

    def mark_launched(self, *, run, files_report: dict) -> bool:
        return self.write(self._validating(), run=run, stage=JobStage.LAUNCHED, files_report=files_report)

    def mark_failed(self, error: dict) -> bool:
        """Validation refused the job: ``error`` is the OpenAI error object (code, param, message)."""
        return self.write(self._validating(), stage=JobStage.FAILED, error=error, finished_at=timezone.now())

    def note_resent(self) -> bool:
        """Its validation message was sent again (``updated_at`` dates the last send)."""
        return self.write(self._validating())


class CompletionStorage(TimeStamped):
    """A project's choices about keeping chat completions: every completion of its keys (not only those sent
    with ``store: true``), and how many days a stored completion is kept (0: forever)."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="completion_storage")
    store_every_completion = models.BooleanField(default=False)
    retention_days = models.PositiveIntegerField(default=30)
    drift_threshold = models.FloatField(
        default=0.3, help_text="share of a week's inputs with no near neighbour in a run's data that marks the run"
    )


class StoredCompletion(TimeStamped):
    """A chat completion kept as OpenAI keeps one sent with ``store: true``: the request's messages, the answer,
    its usage and the caller's metadata. ``public_id`` is the completion's own id (``chatcmpl-...``)."""

    public_id = models.CharField(max_length=64, unique=True)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="stored_completions")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model = models.CharField(max_length=200, help_text="the public model id the request named")
    messages = models.JSONField(help_text="the request's messages [{role, content}]")
    choices = models.JSONField(help_text="OpenAI's choices: [{index, message, finish_reason}]")
    usage = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    request = models.JSONField(default=dict, blank=True, help_text="sampling settings: temperature, top_p, seed...")
    created = models.PositiveBigIntegerField(help_text="the completion's unix time, as its answer said")
    streamed = models.BooleanField(default=False)
    stored_by = models.CharField(
        max_length=16, default="request", help_text="'request' (store: true) or 'project' (store every completion)"
    )

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["project", "created_at", "id"]),
            models.Index(fields=["project", "model", "created_at", "id"]),
        ]

    def __str__(self) -> str:
        return self.public_id

    @property
    def answer(self) -> str:
        first = (self.choices or [{}])[0]
        return (first.get("message") or {}).get("content") or ""
