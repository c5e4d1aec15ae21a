"""Drift, measured per served run and week: how many of the week's stored inputs have no near neighbour among the
inputs of the dataset version the run was trained on."""

from __future__ import annotations

from django.db import models

from apps.accounts.models import Project
from ftstudio.models import TimeStamped


class DriftWeek(TimeStamped):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="drift_weeks")
    week = models.DateField(help_text="the Monday the week starts on")
    inputs = models.PositiveIntegerField()
    unmatched = models.PositiveIntegerField(help_text="inputs with no near neighbour in the run's training data")

    class Meta:
        ordering = ["run", "week"]
        constraints = [models.UniqueConstraint(fields=["run", "week"], name="one_drift_row_per_run_week")]

    @property
    def share(self) -> float:
        return self.unmatched / self.inputs if self.inputs else 0.0
