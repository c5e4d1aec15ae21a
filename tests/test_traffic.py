"""The traffic page: designers and PMs filter stored completions and send rows to drafts; reviewers see nothing."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.api import services as api_services
from apps.api.models import StoredCompletion
from apps.datasets.models import Example, ExampleStatus
from apps.evaluations.models import JudgeSettings
from apps.traffic import services

pytestmark = pytest.mark.django_db


def stored(project, public_id, question, answer, *, model="tiny-llama", metadata=None, age_days=0):
    row = api_services.save_stored_completion(
        project_id=project.pk,
        key_id=None,
        metadata=metadata or {},
        stored_by="request",
        request={"messages": [{"role": "user", "content": question}]},
        completion={
            "id": public_id,
            "model": model,
            "created": 1,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        },
        streamed=False,
    )
    StoredCompletion.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(days=age_days))
    return row


@pytest.fixture
def traffic(team):
    p = team.project
    stored(p, "chatcmpl-a", "Where is order 104?", "It ships today.", metadata={"shop": "eu"})
    stored(p, "chatcmpl-b", "Mail me at ann@example.com", "Done, Ann.", metadata={"shop": "us"})
    stored(p, "chatcmpl-c", "Refund for order 99?", "Refunded.", model="ft:tiny-llama:support:v1:3", age_days=10)
    stored(team.other_project, "chatcmpl-x", "Other team's question", "Other answer")
    return reverse("traffic", kwargs={"slug": p.slug})


def ids(response) -> list[str]:
    return [r.completion.public_id for r in response.context["rows"]]


def test_designer_filters_by_model_metadata_date_and_personal_data(team, traffic):
    designer = team.client("designer")
    assert ids(designer.get(traffic)) == ["chatcmpl-b", "chatcmpl-a", "chatcmpl-c"]  # newest first, own project only
    assert ids(designer.get(traffic, {"model": "ft:tiny-llama:support:v1:3"})) == ["chatcmpl-c"]
    assert ids(designer.get(traffic, {"meta_key": "shop", "meta_value": "eu"})) == ["chatcmpl-a"]
    since = (timezone.now() - timedelta(days=2)).date().isoformat()
    assert ids(designer.get(traffic, {"since": since})) == ["chatcmpl-b", "chatcmpl-a"]
    flagged = designer.get(traffic, {"personal": "yes"})
    assert ids(flagged) == ["chatcmpl-b"] and "Contains an email address" in flagged.content.decode()
    assert ids(designer.get(traffic, {"personal": "no"})) == ["chatcmpl-a", "chatcmpl-c"]
    partial = designer.get(traffic, {"model": "tiny-llama"}, HTTP_HX_REQUEST="true")
    assert b'id="traffic-rows"' in partial.content and b"<html" not in partial.content


def test_sent_rows_become_drafts_with_their_source_and_personal_data_masked(team, traffic):
    response = team.client("designer").post(traffic, {"rows": ["chatcmpl-a", "chatcmpl-b", "chatcmpl-x"]}, follow=True)
    assert "2 rows are now draft examples" in response.content.decode()
    drafts = {e.origin: e for e in Example.objects.filter(project=team.project)}
    assert set(drafts) == {"served answer chatcmpl-a of tiny-llama", "served answer chatcmpl-b of tiny-llama"}
    a, b = drafts["served answer chatcmpl-a of tiny-llama"], drafts["served answer chatcmpl-b of tiny-llama"]
    assert a.status == ExampleStatus.DRAFT and a.ideal_output == "It ships today."
    assert a.messages[0] == {"role": "user", "content": "Where is order 104?"}
    assert b.messages[0]["content"] == "Mail me at [email]" and "ann@example.com" not in str(b.messages)
    assert not Example.objects.filter(project=team.other_project).exists()  # another project's row is not found
    label = team.client("designer").get(reverse("example_label", kwargs={"slug": team.project.slug, "pk": a.pk}))
    assert "from served answer chatcmpl-a of tiny-llama" in label.content.decode()


def test_sending_nothing_says_so(team, traffic):
    response = team.client("pm").post(traffic, {"rows": []}, follow=True)
    assert "Tick at least one row" in response.content.decode()
    assert not Example.objects.exists()


def test_reviewers_see_no_traffic_and_only_pms_change_how_answers_are_kept(team, traffic):
    reviewer = team.client("reviewer")
    assert reviewer.get(traffic).status_code == 403
    assert reviewer.post(traffic, {"rows": ["chatcmpl-a"]}).status_code == 403
    assert b"chatcmpl-a" not in team.client("pm").get(reverse("project_detail", kwargs={"slug": "support"})).content
    storage = reverse("traffic_storage", kwargs={"slug": team.project.slug})
    assert team.client("designer").post(storage, {"retention_days": "3"}).status_code == 403
    team.client("pm").post(storage, {"retention_days": "3", "store_every_completion": "on"})
    settings = team.project.completion_storage
    assert settings.retention_days == 3 and settings.store_every_completion
    bad = team.client("pm").post(storage, {"retention_days": "soon"}, follow=True)
    assert "whole number of days" in bad.content.decode()


class Teacher(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that answers every question with "Teacher: <question>" and keeps the bodies."""

    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Teacher.seen.append(body)
        question = body["messages"][-1]["content"]
        data = json.dumps(
            {
                "id": "chatcmpl-t",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"Teacher: {question}"},
                        "finish_reason": "stop",
                    }
                ],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def teacher_endpoint(team, settings):
    settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE = True  # the stand-in teacher listens on loopback
    server = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Teacher.seen = []
    JudgeSettings.objects.create(
        project=team.project, base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", model="big-teacher"
    )
    yield
    server.shutdown()
    server.server_close()


def test_a_teacher_answers_ticked_rows_into_drafts_with_personal_data_masked(
    team, traffic, teacher_endpoint, eager, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = team.client("designer").post(
            traffic, {"rows": ["chatcmpl-a", "chatcmpl-b"], "action": "distill", "teacher": "judge"}, follow=True
        )
    assert "The teacher is answering 2 questions" in response.content.decode()
    drafts = {e.origin: e for e in Example.objects.filter(project=team.project)}
    assert set(drafts) == {"teacher big-teacher on chatcmpl-a", "teacher big-teacher on chatcmpl-b"}
    assert drafts["teacher big-teacher on chatcmpl-a"].ideal_output == "Teacher: Where is order 104?"
    assert all("ann@example.com" not in json.dumps(body) for body in Teacher.seen)  # masked before it left
    assert drafts["teacher big-teacher on chatcmpl-b"].ideal_output == "Teacher: Mail me at [email]"
    again = services.distill(project=team.project, public_ids=["chatcmpl-a"], teacher="judge")
    assert again == {"answered": 0, "skipped": 1, "failed": 0} and len(Teacher.seen) == 2


def test_a_project_without_a_judge_endpoint_gets_a_clear_error(team, traffic):
    response = team.client("pm").post(
        traffic, {"rows": ["chatcmpl-a"], "action": "distill", "teacher": "judge"}, follow=True
    )
    assert "no judge endpoint to use as a teacher" in response.content.decode()
    assert not Example.objects.exists()


def test_a_teacher_endpoint_on_a_private_address_gets_the_ssrf_check(team, traffic, teacher_endpoint, settings):
    settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE = False  # as in production: the loopback teacher is refused
    outcome = services.distill(project=team.project, public_ids=["chatcmpl-a"], teacher="judge")
    assert outcome == {"answered": 0, "skipped": 0, "failed": 1}
    assert Teacher.seen == [] and not Example.objects.exists()


def test_a_teacher_answers_a_dataset_version_s_training_questions_and_leaves_its_test_questions_unseen(
    team, teacher_endpoint, eager, django_capture_on_commit_callbacks
):
    from tests.factories import conversation, make_dataset_version

    version = make_dataset_version(
        team.project,
        {
            "train": [
                conversation("How do refunds work?", "Old answer"),
                conversation("Call me at 555-123-4567", "Ok"),
            ],
            "test": [conversation("A held-out question", "Unseen")],
        },
    )
    traffic = reverse("traffic", kwargs={"slug": team.project.slug})
    page = team.client("designer").get(traffic).content.decode()
    assert "Have a larger model answer a dataset version" in page and f'value="{version.pk}"' in page
    with django_capture_on_commit_callbacks(execute=True):
        response = team.client("designer").post(
            traffic, {"action": "distill_version", "version": version.pk, "teacher": "judge"}, follow=True
        )
    assert f"training questions of v{version.number}" in response.content.decode()
    drafts = {e.origin: e for e in Example.objects.filter(project=team.project)}
    assert set(drafts) == {"teacher big-teacher on v1 example 1", "teacher big-teacher on v1 example 2"}
    first = drafts["teacher big-teacher on v1 example 1"]
    assert first.messages == [
        {"role": "user", "content": "How do refunds work?"},
        {"role": "assistant", "content": "Teacher: How do refunds work?"},
    ]  # the version's own answer is not sent: the teacher answers the question
    assert first.status == ExampleStatus.DRAFT
    assert [b["messages"] for b in Teacher.seen] == [
        [{"role": "user", "content": "How do refunds work?"}],
        [{"role": "user", "content": "Call me at [phone number]"}],
    ]  # personal data masked before it left; the test question never sent
    again = services.distill(project=team.project, teacher="judge", version_id=version.pk)
    assert again == {"answered": 0, "skipped": 2, "failed": 0}
    other = make_dataset_version(team.other_project, {"train": [conversation("x", "y")]})
    refused = team.client("designer").post(
        traffic, {"action": "distill_version", "version": other.pk, "teacher": "judge"}, follow=True
    )
    assert "dataset versions for the teacher to answer" in refused.content.decode() and len(Teacher.seen) == 2
