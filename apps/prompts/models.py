"""The prompt workspace: numbered prompt versions (a system prompt and few-shot examples picked from a frozen
version's train split), each scored on that version's validation split on the worker.

A ``PromptVersion`` is immutable once created (editing makes the next number); its few-shot turns are copied in
(``shot_messages``) so the prompt stays what was scored even if it is reused on another dataset version.
``PromptOutput`` rows are its outputs beside the ideal ones, with their automatic scores.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Project, TimeStamped
from apps.datasets.models import DatasetVersion, DatasetVersionItem
from apps.runs.leases import LeaseHolder


class PromptStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SCORED = "scored", "Scored"
    FAILED = "failed", "Failed"


class PromptVersion(LeaseHolder, TimeStamped):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompt_versions")
    number = models.PositiveIntegerField()
    dataset_version = models.ForeignKey(
        DatasetVersion,
        on_delete=models.PROTECT,
        related_name="prompt_versions",
        help_text="few-shot examples come from its train split; scored on its val split",
    )
    base_model = models.ForeignKey("runs.BaseModel", on_delete=models.PROTECT, related_name="+")
    rubric = models.ForeignKey(
        "evaluations.Rubric",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="whose automatic checks score the outputs (empty: similarity only)",
    )
    system_prompt = models.TextField()
    shot_positions = models.JSONField(default=list, blank=True, help_text="positions of the chosen train items")
    shot_messages = models.JSONField(default=list, blank=True, help_text="the chosen conversations, copied")
    note = models.CharField(max_length=200, blank=True)
    max_new_tokens = models.PositiveIntegerField(default=96)

    status = models.CharField(max_length=10, choices=PromptStatus.choices, default=PromptStatus.QUEUED)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    mean_similarity = models.FloatField(null=True, blank=True, help_text="mean token F1 against the ideal outputs")
    checks_passed = models.PositiveIntegerField(
        null=True, blank=True, help_text="outputs passing every automatic check"
    )
    check_summary = models.JSONField(default=dict, blank=True, help_text='{"criterion": [passed, checked]}')
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # the lease of the scoring task (apps/runs/leases.py, as runs and evaluations): the reaper re-sends a version
    # whose worker died or whose message was lost
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker_id = models.CharField(max_length=200, blank=True, help_text="the claim's owner (host:pid:start:token)")
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="when the last task message was sent")

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="prompt_version_number_unique")]
        indexes = [models.Index(fields=["project", "dataset_version", "status"])]

    def __str__(self) -> str:
        return f"Prompt v{self.number}"

    def get_absolute_url(self) -> str:
        return reverse("prompt_version_detail", kwargs={"slug": self.project.slug, "number": self.number})

    @property
    def is_active(self) -> bool:
        return self.status in (PromptStatus.QUEUED, PromptStatus.RUNNING)

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0

    @property
    def checks_rate(self) -> float | None:
        return self.checks_passed / self.total if self.checks_passed is not None and self.total else None

    # a row's own state changes (TimeStamped.write: ``rows``, the lease's owner-filtered rows, makes a worker that
    # lost its claim write nothing)
    def mark_running(self, *, owner: str = "", now=None) -> bool:
        """Claimed by a worker: one more attempt, its owner id and a first heartbeat."""
        return self.write(
            status=PromptStatus.RUNNING,
            error="",
            worker_id=owner,
            attempts=self.attempts + 1,
            heartbeat_at=now or timezone.now(),
        )

    def mark_scored(
        self, *, rows=None, mean_similarity: float, checks_passed: int | None, check_summary: dict, done: int
    ) -> bool:
        return self.write(
            rows,
            status=PromptStatus.SCORED,
            finished_at=timezone.now(),
            done=done,
            mean_similarity=mean_similarity,
            checks_passed=checks_passed,
            check_summary=check_summary,
        )

    def mark_failed(self, error: str, *, rows=None) -> bool:
        return self.write(rows, status=PromptStatus.FAILED, error=error, finished_at=timezone.now())


class PromptOutput(models.Model):
    prompt_version = models.ForeignKey(PromptVersion, on_delete=models.CASCADE, related_name="outputs")
    item = models.ForeignKey(DatasetVersionItem, on_delete=models.CASCADE, related_name="+")
    output = models.TextField()
    similarity = models.FloatField(default=0, help_text="token F1 against the ideal output, 0-1")
    checks = models.JSONField(default=list, blank=True, help_text='[{"criterion", "check", "passed", "detail"}]')
    passed_all = models.BooleanField(null=True, help_text="every automatic check passed (empty: no checks)")
    latency_ms = models.FloatField(default=0)

    class Meta:
        ordering = ["prompt_version", "item__position"]
        constraints = [models.UniqueConstraint(fields=["prompt_version", "item"], name="prompt_output_unique")]
