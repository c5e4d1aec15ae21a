"""Data experiments: how a score grows with the number of training examples, and curated against raw data.

* An Experiment trains one run per (arm, fraction) with the same preset, seed and base model, and scores each
  run on one shared test split with the automatic metrics (an evaluation with the run as its only candidate).
* An Arm is one source DatasetVersion (one arm: a scaling curve; two: curated against raw on one chart).
* A Point is one subset of an arm's train split: its own frozen version (``DatasetVersion.derived_from``), its
  run and, once the run has succeeded, its evaluation. Subsets of an arm are nested (prefixes of one seeded
  permutation). Scores are read from the evaluations when shown (``selectors.py``), never copied here.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Project, TimeStamped
from apps.datasets.models import DatasetVersion
from apps.evaluations.models import Evaluation, EvaluationStatus, Rubric
from apps.runs.models import BaseModel, Run, RunStatus


class ExperimentStatus(models.TextChoices):
    RUNNING = "running", "Running"
    FINISHED = "finished", "Finished"
    CANCELLED = "cancelled", "Cancelled"


class Experiment(TimeStamped):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=160)
    fractions = models.JSONField(help_text="shares of each arm's train split, ascending, e.g. [0.125, 0.25, 0.5, 1.0]")
    preset = models.CharField(max_length=20)
    steps = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="the same number of training steps for every size (smaller subsets get more epochs); "
        "empty: the preset's epochs, so smaller subsets also get fewer steps",
    )
    seed = models.PositiveIntegerField(default=0, help_text="the subsets' permutation and every run's seed")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="+")
    rubric = models.ForeignKey(Rubric, on_delete=models.PROTECT, related_name="+")
    test_version = models.ForeignKey(
        DatasetVersion,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="whose test split every point is scored on",
    )
    status = models.CharField(max_length=10, choices=ExperimentStatus.choices, default=ExperimentStatus.RUNNING)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "-created_at"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("experiment_detail", kwargs={"slug": self.project.slug, "pk": self.pk})

    @property
    def is_finished(self) -> bool:
        return self.status != ExperimentStatus.RUNNING

    # a row's own state changes (TimeStamped.write), each only from running: a finished experiment stays as it ended
    def _end(self, status: str) -> bool:
        running = Experiment.objects.filter(pk=self.pk, status=ExperimentStatus.RUNNING)
        return self.write(running, status=status, finished_at=timezone.now())

    def mark_finished(self) -> bool:
        return self._end(ExperimentStatus.FINISHED)

    def mark_cancelled(self) -> bool:
        return self._end(ExperimentStatus.CANCELLED)


class Arm(models.Model):
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="arms")
    position = models.PositiveSmallIntegerField(default=0)
    label = models.CharField(max_length=80)
    source_version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="+")
    train_total = models.PositiveIntegerField(help_text="train examples available to this arm (after leakage removal)")
    dropped = models.PositiveIntegerField(
        default=0, help_text="train examples left out: they are in the shared test split"
    )

    class Meta:
        ordering = ["experiment", "position"]
        constraints = [models.UniqueConstraint(fields=["experiment", "position"], name="arm_position_unique")]

    def __str__(self) -> str:
        return self.label


class Point(models.Model):
    arm = models.ForeignKey(Arm, on_delete=models.CASCADE, related_name="points")
    fraction = models.FloatField()
    n_train = models.PositiveIntegerField()
    version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="experiment_points")
    evaluation = models.ForeignKey(
        Evaluation, null=True, blank=True, on_delete=models.PROTECT, related_name="experiment_points"
    )

    class Meta:
        ordering = ["arm", "n_train"]
        constraints = [models.UniqueConstraint(fields=["arm", "fraction"], name="point_fraction_unique")]

    def __str__(self) -> str:
        return f"{self.arm} · {self.share} ({self.n_train} examples)"

    @property
    def share(self) -> str:
        return f"{self.fraction * 100:g} %"

    @property
    def is_finished(self) -> bool:
        """Nothing more will happen to it: its run failed or was cancelled, or its outputs are scored (or failed)."""
        if self.run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            return True
        if self.evaluation_id is None:
            return False
        return self.evaluation.status == EvaluationStatus.FAILED or (
            self.evaluation.status == EvaluationStatus.READY and self.checks_done
        )

    @property
    def checks_done(self) -> bool:
        from apps.evaluations.models import AutoCheck, CheckResult, Generation

        checks = AutoCheck.objects.filter(criterion__rubric=self.evaluation.rubric_id).count()
        if not checks:
            return True
        outputs = Generation.objects.filter(candidate__evaluation=self.evaluation_id).count()
        return (
            CheckResult.objects.filter(generation__candidate__evaluation=self.evaluation_id).count() >= outputs * checks
        )

    @property
    def stage(self) -> str:
        """Where the point is, in a PM's words."""
        run = self.run
        if run.status != RunStatus.SUCCEEDED:
            return f"training {run.get_status_display().lower()}"
        if self.evaluation_id is None:
            return "trained, evaluation queued"
        evaluation = self.evaluation
        if evaluation.status == EvaluationStatus.READY:
            return "scored" if self.checks_done else "checking outputs"
        return f"evaluation {evaluation.get_status_display().lower()} ({evaluation.done}/{evaluation.total})"
