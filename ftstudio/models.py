"""Abstract model bases shared by every app (no tables of their own, so no migrations)."""

from __future__ import annotations

from django.db import models


class TimeStamped(models.Model):
    """``created_at`` / ``updated_at`` on every row that has a life of its own (DESIGN.md: conventions)."""

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
