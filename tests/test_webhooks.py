"""Webhooks: endpoints on the settings page, Standard Webhooks signatures checked with the `standardwebhooks`
package by a real local HTTP receiver, the retry after a 500, backoff and giving up, resend, and the SSRF guard."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import openai
import pytest
from django.utils import timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from apps.api.models import FineTuningJob
from apps.runs import launching
from apps.webhooks import services, tasks
from apps.webhooks.models import DeliveryStatus, WebhookDelivery
from tests import runs_setup
from tests.api_setup import trained_run
from tests.webhook_receiver import Receiver

tiny_base_model = runs_setup.tiny_base_model
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receiver(settings):
    settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on loopback
    r = Receiver([500])
    yield r
    r.close()


def add_endpoint(team, url: str, events=("fine_tuning.job.succeeded", "fine_tuning.job.cancelled")) -> str:
    response = team.client("pm").post(
        f"/p/{team.project.slug}/settings/webhooks/", {"url": url, "events": list(events)}
    )
    page = response.content.decode()
    found = re.search(r"signing secret: <code>(whsec_[A-Za-z0-9+/=]+)", page)
    assert response.status_code == 200 and found, page  # shown in this response, not after a redirect
    assert not any(found.group(1) in morsel.value for morsel in response.cookies.values())
    return found.group(1)


def test_a_cancelled_job_is_delivered_signed_retried_after_a_500_and_resent(team, tiny_base_model, receiver, settings):
    secret = add_endpoint(team, receiver.url)
    run = launching.launch_run(
        project=team.project,
        dataset_version=runs_setup.small_version(team.project),
        base_model=tiny_base_model,
        overrides=runs_setup.FAST,
    )
    launching.cancel_run(run=run)  # queued: cancelled at once, the event fires when that commits
    delivery = WebhookDelivery.objects.get()
    assert tasks.deliver.apply(args=[delivery.pk]).get() == "pending"  # the receiver answered 500
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.last_status_code == 500 and delivery.status == DeliveryStatus.PENDING
    wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert settings.FTSTUDIO_WEBHOOK_RETRY_BASE_SECONDS - 2 < wait <= settings.FTSTUDIO_WEBHOOK_RETRY_BASE_SECONDS
    assert tasks.deliver.apply(args=[delivery.pk]).get() == "skipped"  # not due yet: nothing sent
    assert services.send_due() == []

    assert services.send_due(now=delivery.next_attempt_at) == [delivery.pk]  # the periodic sender finds it due
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert tasks.deliver.apply(args=[delivery.pk]).get() == "succeeded"
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and delivery.last_status_code == 200 and delivery.delivered_at

    assert len(receiver.requests) == 2
    for headers, body in receiver.requests:
        event = Webhook(secret).verify(body, headers)  # raises unless the signature is right
        assert event["type"] == "fine_tuning.job.cancelled" and event["object"] == "event"
        assert event["data"]["id"] == FineTuningJob.objects.get(run=run).public_id
    assert receiver.requests[0][0]["webhook-id"] == receiver.requests[1][0]["webhook-id"] == event["id"]
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 32).verify(receiver.requests[0][1], receiver.requests[0][0])  # another secret fails

    page = team.client("pm").get(f"/p/{team.project.slug}/settings/").content.decode()
    assert "fine_tuning.job.cancelled" in page and "HTTP 200" in page and "Delivered" in page
    team.client("pm").post(f"/p/{team.project.slug}/settings/webhooks/deliveries/{delivery.pk}/resend/")
    assert WebhookDelivery.objects.get(pk=delivery.pk).status == DeliveryStatus.PENDING
    assert tasks.deliver.apply(args=[delivery.pk]).get() == "succeeded"
    assert len(receiver.requests) == 3 and WebhookDelivery.objects.count() == 1
    launching.cancel_run(run=run)  # already cancelled: no second event
    assert WebhookDelivery.objects.count() == 1


def test_a_succeeded_run_fires_its_event_only_to_endpoints_that_asked(team, tiny_base_model, receiver):
    add_endpoint(team, receiver.url, events=["fine_tuning.job.succeeded"])
    add_endpoint(team, receiver.url + "/other", events=["evaluation.ready"])
    run = trained_run(team.project, tiny_base_model, team.pm)
    delivery = WebhookDelivery.objects.get()
    assert delivery.event_type == "fine_tuning.job.succeeded" and delivery.endpoint.url == receiver.url
    assert delivery.payload["data"]["id"] == FineTuningJob.objects.get(run=run).public_id


def test_backoff_doubles_and_a_delivery_is_given_up_after_the_retry_window(team, receiver, settings):
    settings.FTSTUDIO_WEBHOOK_RETRY_BASE_SECONDS, settings.FTSTUDIO_WEBHOOK_RETRY_CAP_SECONDS = 30, 4 * 3600
    assert [services.backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert services.backoff(20).total_seconds() == 4 * 3600
    elapsed, attempts = 0.0, 0
    while elapsed + services.backoff(attempts + 1).total_seconds() <= settings.FTSTUDIO_WEBHOOK_RETRY_HOURS * 3600:
        attempts += 1
        elapsed += services.backoff(attempts).total_seconds()
    assert elapsed >= 24 * 3600 and attempts >= 10  # tried again for at least a day

    receiver.answers = [503] * 5
    endpoint, _ = services.create_endpoint(project=team.project, url=receiver.url, events=["evaluation.ready"])
    (delivery,) = services.emit(project_id=team.project.pk, event_type="evaluation.ready", event_key="e1", data={})
    WebhookDelivery.objects.filter(pk=delivery.pk).update(created_at=timezone.now() - timedelta(hours=25))
    assert tasks.deliver.apply(args=[delivery.pk]).get() == DeliveryStatus.FAILED
    delivery.refresh_from_db()
    assert delivery.last_status_code == 503 and delivery.next_attempt_at is None
    assert services.emit(project_id=team.project.pk, event_type="evaluation.ready", event_key="e1", data={}) == []


def test_only_public_http_urls_are_accepted_unless_private_ones_are_allowed(team, settings):
    settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE = False
    for url, why in (
        ("ftp://example.com/x", "not an http(s) URL"),
        ("http://127.0.0.1:8000/admin", "127.0.0.1"),
        ("http://10.1.2.3/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "169.254"),
        ("http://[::1]/hook", "::1"),
        ("http://localhost/hook", "loopback"),
        ("https://user:pw@93.184.216.34/", "password"),
    ):
        with pytest.raises(services.WebhookError) as refused:
            services.check_url(url)
        assert why in str(refused.value), url
    assert services.check_url("https://93.184.216.34/hooks") == "https://93.184.216.34/hooks"
    page = team.client("pm").post(
        f"/p/{team.project.slug}/settings/webhooks/",
        {"url": "http://127.0.0.1/", "events": ["evaluation.ready"]},
        follow=True,
    )
    assert "private, loopback or reserved" in page.content.decode() and not team.project.webhook_endpoints.exists()
    with pytest.raises(services.WebhookError):
        services.create_endpoint(project=team.project, url="https://93.184.216.34/", events=["nope"])

    endpoint, _ = services.create_endpoint(
        project=team.project, url="https://93.184.216.34/", events=["evaluation.ready"]
    )
    endpoint.url = "http://127.0.0.1:9/"  # e.g. DNS now points inside: checked again before every send
    endpoint.save()
    (delivery,) = services.emit(project_id=team.project.pk, event_type="evaluation.ready", event_key="e2", data={})
    assert services.deliver(delivery.pk) == DeliveryStatus.PENDING
    delivery.refresh_from_db()
    assert "private, loopback or reserved" in delivery.last_error and delivery.last_status_code is None


def test_the_payload_is_json_of_the_event(team, receiver):
    secret = add_endpoint(team, receiver.url, events=["evaluation.reviewed"])
    (delivery,) = services.emit(
        project_id=team.project.pk,
        event_type="evaluation.reviewed",
        event_key="r1",
        data={"id": "eval-1", "reviewer": "reviewer"},
    )
    receiver.answers = []
    services.deliver(delivery.pk)
    headers, body = receiver.requests[-1]
    assert json.loads(body) == Webhook(secret).verify(body, headers) == delivery.payload
    openai.OpenAI(api_key="unused").webhooks.verify_signature(
        body.decode(), headers, secret=secret
    )  # OpenAI's check too


def test_evaluation_ready_and_reviewed_fire_from_generation_and_the_last_judgment(
    team, settings, tiny_model_dir, tmp_path, receiver
):
    from django.db import transaction

    from apps.evaluations import review as evaluations_review
    from tests.eval_setup import make_evaluation

    add_endpoint(team, receiver.url, events=["evaluation.ready", "evaluation.reviewed"])
    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, reviewers_per_pair=1)  # generates
    ready = WebhookDelivery.objects.get()
    assert ready.event_type == "evaluation.ready" and ready.payload["data"]["id"] == f"eval-{evaluation.pk}"
    while (a := evaluations_review.next_assignment(evaluation=evaluation, reviewer=team.reviewer)) is not None:
        assert not WebhookDelivery.objects.filter(event_type="evaluation.reviewed").exists()  # not before the last
        with transaction.atomic():
            evaluations_review.submit_judgment(assignment=a, reviewer=team.reviewer, winner="A", scores={})
    reviewed = WebhookDelivery.objects.get(event_type="evaluation.reviewed")
    assert reviewed.payload["data"] == {"id": f"eval-{evaluation.pk}", "name": evaluation.name, "reviewer": "reviewer"}
