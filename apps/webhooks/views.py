"""The webhooks section of the project settings: add and delete endpoints, resend a delivery (PMs: ``manage``)."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect

from apps.accounts.permissions import project_view

from . import services
from .models import EventType


def _back(project):
    return redirect(f"/p/{project.slug}/settings/#webhooks")


@project_view("manage")
def endpoints(request, project):
    if request.method != "POST":
        return _back(project)
    try:
        if "delete" in request.POST:
            endpoint = services.delete_endpoint(project=project, endpoint_id=int(request.POST["delete"]))
            messages.success(request, f"Deleted the webhook endpoint {endpoint.url}.")
        else:
            endpoint, secret = services.create_endpoint(
                project=project,
                url=request.POST.get("url", ""),
                events=request.POST.getlist("events"),
                user=request.user,
            )
            from apps.accounts.views import settings_page

            shown = {"what": f"Added {endpoint.url}. Its signing secret", "value": secret}
            return settings_page(request, project, shown_once=shown)
    except (services.WebhookError, ValueError) as exc:
        messages.error(request, str(exc))
    return _back(project)


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
