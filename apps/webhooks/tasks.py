"""Celery tasks of webhooks (queue ``default``): send one delivery; the periodic sender of due retries."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="webhooks.deliver", queue="default", acks_late=True)
def deliver(delivery_pk: int) -> str:
    """Send one delivery if due; a duplicate message finds it sent, or being sent, and does nothing."""
    from .services import deliver as send_delivery

    return send_delivery(delivery_pk)


@shared_task(name="webhooks.send_due", queue="default")
def send_due() -> list[int]:
    from .services import send_due as send_due_deliveries

    return send_due_deliveries()
