"""Abstract model bases shared by every app (no tables of their own, so no migrations)."""

from __future__ import annotations

from django.db import models
from django.db.models.expressions import Combinable
from django.utils import timezone


class StateMachine(models.Model):
    """A row whose state changes through its own methods, each one ``write``: no fields of its own."""

    class Meta:
        abstract = True

    def write(self, rows=None, **values) -> bool:
        """Write ``values`` (and ``updated_at``, where the row has one) to this row and mirror them on this instance;
        True if a row matched.

        ``rows`` narrows the write: a lease's owner-filtered queryset (``Lease.rows()``) makes it match nothing
        once another worker owns the row, so a worker that lost its claim writes nothing. Model methods that
        change a row's state (``Run.mark_running`` ...) go through here."""
        if any(field.name == "updated_at" for field in self._meta.concrete_fields):
            values["updated_at"] = timezone.now()
        rows = rows if rows is not None else type(self)._default_manager.filter(pk=self.pk)
        matched = bool(rows.update(**values))
        if matched:
            for name, value in values.items():
                if not isinstance(value, Combinable):  # an F() expression: the instance keeps its old value
                    setattr(self, name, value)
        return matched


class TimeStamped(StateMachine):
    """``created_at`` / ``updated_at`` on every row that has a life of its own."""

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
