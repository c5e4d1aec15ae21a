"""The webhooks section of the project settings: resend a delivery (PMs: ``manage``), and what the section shows.
Adding and deleting endpoints answer with the settings page, so apps/overview (settings_page.py) composes them."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect

from apps.accounts.permissions import project_view

from . import services
from .models import EventType


def _back(project):
    return redirect(f"/p/{project.slug}/settings/#webhooks")


@project_view("manage")
def resend(request, project, pk: int):
    if request.method == "POST":
        try:
            delivery = services.resend(project=project, delivery_id=pk)
            messages.success(
                request, f"Sending {delivery.get_event_type_display().lower()} to {delivery.endpoint.url} again."
            )
        except services.WebhookError as exc:
            messages.error(request, str(exc))
    return _back(project)


def section_context(project) -> dict:
    from .models import WebhookDelivery

    return {
        "webhook_endpoints": project.webhook_endpoints.all(),
        "webhook_events": EventType.choices,
        "webhook_deliveries": WebhookDelivery.objects.filter(endpoint__project=project).select_related("endpoint")[:50],
    }
