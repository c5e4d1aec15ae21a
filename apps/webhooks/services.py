"""Webhooks: endpoints (PMs register them per project), events (fired after the state change commits) and their
delivery, signed per Standard Webhooks as OpenAI's are (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``, signed with the ``standardwebhooks`` package).

Delivery: task ``webhooks.deliver`` sends at once; a failure (no answer, or a status other than 2xx) is tried again
with exponential backoff (FTSTUDIO_WEBHOOK_RETRY_BASE_SECONDS doubling, at most FTSTUDIO_WEBHOOK_RETRY_CAP_SECONDS
apart) for FTSTUDIO_WEBHOOK_RETRY_HOURS (25 h) by the periodic ``webhooks.send_due``; then it is given up.
A resend from the settings page sends the same event (same ``webhook-id``) again.

SSRF: only http(s) URLs, and every address the host resolves to must be public (no private, loopback,
link-local, reserved or multicast address, nor one carried in NAT64, 6to4 or IPv4-mapped form), checked at
registration and again before every send, which goes to the address checked (``worker.outbound``, the one SSRF check,
also the LLM judge's), and redirects are not followed; FTSTUDIO_WEBHOOK_ALLOW_PRIVATE=1 lifts the address check
(tests, an all-internal deployment; the judge's endpoint too).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from datetime import timedelta
from urllib.parse import urlparse

import httpx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from standardwebhooks import Webhook

from ftstudio.queueing import send_after_commit
from worker.outbound import OutboundRefused, PublicOnlyTransport, public_address

from .models import DeliveryStatus, EventType, WebhookDelivery, WebhookEndpoint
from .tasks import deliver as deliver_task

log = logging.getLogger(__name__)

RUN_EVENTS = {
    "succeeded": EventType.JOB_SUCCEEDED,
    "failed": EventType.JOB_FAILED,
    "cancelled": EventType.JOB_CANCELLED,
}
SENDING_LEASE = timedelta(seconds=120)  # a claimed delivery is not claimed again for this long (one sender at a time)


class WebhookError(ValueError):
    """An endpoint refused (bad URL, a private address, no events); the message says why."""


# --- endpoints ----------------------------------------------------------------------------------------
def check_url(url: str) -> str:
    """The URL if it may receive webhooks, else WebhookError saying why (see the module's SSRF note)."""
    url = (url or "").strip()
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise WebhookError(f"{url!r} is not an http(s) URL: a webhook URL looks like https://example.com/hooks.")
    if parsed.username or parsed.password:
        raise WebhookError("Put no user name or password in the URL: deliveries are signed with the endpoint's secret.")
    if settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE:
        return url
    try:
        public_address(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    except OutboundRefused as exc:
        raise WebhookError(
            f"{exc} Webhooks go to public addresses only (FTSTUDIO_WEBHOOK_ALLOW_PRIVATE=1 allows others)."
        ) from None
    return url


def create_endpoint(*, project, url: str, events: list[str], user=None) -> tuple[WebhookEndpoint, str]:
    """A new endpoint; returns it and its signing secret (shown once on the settings page)."""
    unknown = sorted(set(events) - set(EventType.values))
    if unknown:
        raise WebhookError(f"Unknown event {unknown[0]!r}: choose from {', '.join(EventType.values)}.")
    if not events:
        raise WebhookError("Choose at least one event to send.")
    url = check_url(url)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    endpoint = WebhookEndpoint.objects.create(
        project=project, url=url, events=sorted(set(events)), secret=secret, created_by=user
    )
    return endpoint, secret


def delete_endpoint(*, project, endpoint_id: int) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(project=project, pk=endpoint_id).first()
    if endpoint is None:
        raise WebhookError("No such endpoint in this project.")
    endpoint.delete()
    return endpoint


# --- events -------------------------------------------------------------------------------------------
def emit(*, project_id: int, event_type: str, event_key: str, data: dict) -> list[WebhookDelivery]:
    """One delivery per endpoint of the project that asked for this event (once per ``event_key``); each is sent
    when the transaction commits."""
    made = []
    for endpoint in WebhookEndpoint.objects.filter(project_id=project_id):
        if event_type not in endpoint.events:
            continue
        message_id = "evt_" + secrets.token_hex(16)
        payload = {
            "id": message_id,
            "object": "event",
            "type": event_type,
            "created_at": int(timezone.now().timestamp()),
            "data": data,
        }
        try:
            with transaction.atomic():
                delivery = WebhookDelivery.objects.create(
                    endpoint=endpoint,
                    event_type=event_type,
                    event_key=event_key,
                    message_id=message_id,
                    payload=payload,
                )
        except IntegrityError:  # this event was already sent to this endpoint
            continue
        made.append(delivery)
        send_after_commit(deliver_task, delivery.pk)
    return made


def _safely(what: str, fire) -> None:
    try:
        fire()
    except Exception:  # a webhook never breaks the state change that fired it
        log.exception("Webhook event for %s not recorded", what)


def announce_run(run_pk: int) -> None:
    """A run ended (succeeded, failed, cancelled): ``fine_tuning.job.<status>`` with the job's id."""

    def fire():
        from apps.api.ft_jobs import adopt_runs
        from apps.api.models import FineTuningJob
        from apps.runs.models import Run

        run = Run.objects.filter(pk=run_pk).select_related("project").first()
        if run is None or run.status not in RUN_EVENTS:
            return
        if not WebhookEndpoint.objects.filter(project_id=run.project_id).exists():
            return
        adopt_runs(run.project)
        job_id = FineTuningJob.objects.filter(run=run).values_list("public_id", flat=True).first()
        stamp = int(run.finished_at.timestamp()) if run.finished_at else 0
        emit(
            project_id=run.project_id,
            event_type=RUN_EVENTS[run.status],
            event_key=f"run-{run.pk}-{run.status}-{stamp}",
            data={"id": job_id},
        )

    _safely(f"run {run_pk}", fire)


def announce_evaluation_ready(evaluation_pk: int) -> None:
    def fire():
        from apps.evaluations.models import Evaluation

        evaluation = Evaluation.objects.filter(pk=evaluation_pk).first()
        if evaluation is not None:
            emit(
                project_id=evaluation.project_id,
                event_type=EventType.EVALUATION_READY,
                event_key=f"evaluation-{evaluation.pk}-ready",
                data={"id": f"eval-{evaluation.pk}", "name": evaluation.name},
            )

    _safely(f"evaluation {evaluation_pk}", fire)


def announce_evaluation_reviewed(evaluation_pk: int, reviewer_pk: int) -> None:
    """A reviewer judged their last pair of an evaluation."""

    def fire():
        from django.contrib.auth import get_user_model

        from apps.evaluations.models import Evaluation
        from apps.evaluations.selectors import remaining_for

        evaluation = Evaluation.objects.filter(pk=evaluation_pk).first()
        if evaluation is None or not WebhookEndpoint.objects.filter(project_id=evaluation.project_id).exists():
            return
        reviewer = get_user_model().objects.get(pk=reviewer_pk)
        if remaining_for(evaluation, reviewer) == 0:
            emit(
                project_id=evaluation.project_id,
                event_type=EventType.EVALUATION_REVIEWED,
                event_key=f"evaluation-{evaluation.pk}-reviewed-{reviewer_pk}",
                data={"id": f"eval-{evaluation.pk}", "name": evaluation.name, "reviewer": reviewer.username},
            )

    _safely(f"evaluation {evaluation_pk}", fire)


# --- delivery -----------------------------------------------------------------------------------------
def signed_headers(endpoint: WebhookEndpoint, message_id: str, body: str, now=None) -> dict[str, str]:
    now = now or timezone.now()
    signature = Webhook(endpoint.secret).sign(msg_id=message_id, timestamp=now, data=body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "ftstudio-webhooks/1",
    }


def backoff(attempts: int) -> timedelta:
    """Seconds before the next try after ``attempts`` failed ones: doubling from the base, capped."""
    base = settings.FTSTUDIO_WEBHOOK_RETRY_BASE_SECONDS
    return timedelta(seconds=min(base * 2 ** max(0, attempts - 1), settings.FTSTUDIO_WEBHOOK_RETRY_CAP_SECONDS))


def deliver(delivery_pk: int) -> str:
    """Send one delivery if it is due and nobody else is sending it; record the answer and when to try again."""
    now = timezone.now()
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_pk).first()
    if delivery is None or not delivery.claim(now=now, until=now + SENDING_LEASE):
        return "skipped"
    body = json.dumps(delivery.payload, separators=(",", ":"))
    code, error = None, ""
    try:
        url = check_url(delivery.endpoint.url)
        transport = PublicOnlyTransport(allow_private=settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE)
        with httpx.Client(transport=transport, timeout=settings.FTSTUDIO_WEBHOOK_TIMEOUT) as client:
            response = client.post(  # to the address just checked (resolved once: no DNS rebinding)
                url,
                content=body.encode(),
                headers=signed_headers(delivery.endpoint, delivery.message_id, body),
                follow_redirects=False,
            )
        code = response.status_code
        if not 200 <= code < 300:
            error = f"HTTP {code}" + (" (redirects are not followed)" if 300 <= code < 400 else "")
    except WebhookError as exc:
        error = str(exc)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    following = timezone.now() + backoff(delivery.attempts + 1)
    within_window = following - delivery.created_at <= timedelta(hours=settings.FTSTUDIO_WEBHOOK_RETRY_HOURS)
    delivery.record_attempt(code=code, error=error, retry_at=following if within_window else None)
    return delivery.status


def send_due(now=None) -> list[int]:
    """The periodic sender: every pending delivery whose next try is due (retries, and first sends whose message
    was lost)."""
    now = now or timezone.now()
    due = list(
        WebhookDelivery.objects.filter(
            Q(next_attempt_at__lte=now) | Q(next_attempt_at__isnull=True), status=DeliveryStatus.PENDING
        ).values_list("pk", flat=True)[:500]
    )
    for pk in due:
        deliver_task.delay(pk)
    return due


def resend(*, project, delivery_id: int) -> WebhookDelivery:
    """Send a delivery again now (same event, same webhook-id), whatever happened to it before."""
    delivery = WebhookDelivery.objects.filter(endpoint__project=project, pk=delivery_id).first()
    if delivery is None:
        raise WebhookError("No such delivery in this project.")
    delivery.mark_pending()
    send_after_commit(deliver_task, delivery.pk)
    return delivery
