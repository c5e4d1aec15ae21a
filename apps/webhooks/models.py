"""Webhook endpoints (per project, registered by PMs) and the deliveries of events to them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.accounts.models import Project, TimeStamped


class EventType(models.TextChoices):
    JOB_SUCCEEDED = "fine_tuning.job.succeeded", "Fine-tuning job succeeded"
    JOB_FAILED = "fine_tuning.job.failed", "Fine-tuning job failed"
    JOB_CANCELLED = "fine_tuning.job.cancelled", "Fine-tuning job cancelled"
    EVALUATION_READY = "evaluation.ready", "Evaluation ready for review"
    EVALUATION_REVIEWED = "evaluation.reviewed", "Evaluation reviewed (a reviewer finished)"


class WebhookEndpoint(TimeStamped):
    """Where a project's events go. The signing secret (``whsec_`` + base64, Standard Webhooks) is needed to sign
    every delivery, so it is stored; the settings page shows it once, when the endpoint is made."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=500)
    events = models.JSONField(default=list, help_text="EventType values")
    secret = models.CharField(max_length=100)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.url


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Delivered"
    FAILED = "failed", "Gave up"


class WebhookDelivery(TimeStamped):
    """One event for one endpoint. ``event_key`` makes an event happen once per endpoint (a redelivered task or a
    second state write sends nothing new); ``message_id`` is the ``webhook-id`` header, the same on every retry."""

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_type = models.CharField(max_length=40, choices=EventType.choices)
    event_key = models.CharField(max_length=120)
    message_id = models.CharField(max_length=40, unique=True)
    payload = models.JSONField()
    status = models.CharField(max_length=12, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]
        constraints = [models.UniqueConstraint(fields=["endpoint", "event_key"], name="one_delivery_per_event")]

    def __str__(self) -> str:
        return f"{self.event_type} to {self.endpoint}"

    # a row's own state changes (TimeStamped.write)
    def claim(self, *, now, until) -> bool:
        """Take the delivery for one send if it is pending and due: ``next_attempt_at`` moved to ``until`` is the
        sending lease (a second sender finds it not due). False when it is not this sender's to send."""
        due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
        return self.write(
            WebhookDelivery.objects.filter(due, pk=self.pk, status=DeliveryStatus.PENDING), next_attempt_at=until
        )

    def record_attempt(self, *, code: int | None, error: str, retry_at=None) -> bool:
        """One send's answer: succeeded (no ``error``), to be tried again at ``retry_at``, or failed (neither)."""
        values = {"attempts": self.attempts + 1, "last_status_code": code, "last_error": error[:500]}
        if not error:
            values.update(status=DeliveryStatus.SUCCEEDED, delivered_at=timezone.now(), next_attempt_at=None)
        elif retry_at is None:
            values.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
        else:
            values.update(next_attempt_at=retry_at)
        return self.write(**values)

    def mark_pending(self) -> bool:
        """Send again now, whatever happened before (same event, same webhook-id)."""
        return self.write(status=DeliveryStatus.PENDING, next_attempt_at=None)
