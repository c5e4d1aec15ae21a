"""A sample of recent traffic reviewed blind: the served model's stored answers, as they were, against another
model's answers to the same questions, generated the way every evaluation's candidates are."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.api import services as api_services
from apps.api.models import StoredCompletion
from apps.api.selectors import run_model_id
from apps.evaluations import generation as eval_generation
from apps.evaluations.models import CandidateKind, Evaluation, EvaluationStatus
from apps.evaluations.selectors import eval_items
from tests.eval_setup import make_rubric, make_run, make_version, register_tiny_model, save_adapter

pytestmark = pytest.mark.django_db

QUESTIONS = ["Where is order #7?", "Mail ann@example.com the invoice", "Can I return shoes?", "Is it in stock?"]


def store(project, model: str, question: str, answer: str, age_hours: int) -> None:
    row = api_services.save_stored_completion(
        project_id=project.pk,
        key_id=None,
        metadata={"shop": "eu"},
        stored_by="request",
        request={"messages": [{"role": "user", "content": question}]},
        completion={
            "id": f"chatcmpl-{age_hours}",
            "model": model,
            "created": 1,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
        },
        streamed=False,
    )
    StoredCompletion.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(hours=age_hours))


@pytest.fixture
def served(team, settings, tiny_model_dir, tmp_path):
    base = register_tiny_model(settings, tiny_model_dir)
    version = make_version(team.project)
    run = make_run(team.project, version, base, save_adapter(tiny_model_dir, tmp_path / "adapter"))
    model = run_model_id(run)
    for age, question in enumerate(QUESTIONS):  # QUESTIONS[0] is the newest
        store(team.project, model, question, f"Served answer to {question}", age)
    store(team.project, "tiny-secret-llama", "Asked the base model", "Base answer", 0)
    return run, model, make_rubric(team.project)


def test_a_pm_samples_the_newest_answers_of_the_served_model_into_a_blind_evaluation(
    team, served, monkeypatch, django_capture_on_commit_callbacks
):
    from apps.evaluations.tasks import generate_outputs

    run, model, rubric = served
    sent = []
    monkeypatch.setattr(generate_outputs, "delay", sent.append)
    with django_capture_on_commit_callbacks(execute=True):
        response = team.client("pm").post(
            reverse("traffic_review", kwargs={"slug": team.project.slug}),
            {"model": model, "size": "3", "challenger": "base", "rubric": rubric.pk},
        )
    evaluation = Evaluation.objects.get()
    assert response.status_code == 302 and response.url == evaluation.get_absolute_url()
    assert sent == [evaluation.pk]  # queued for the ordinary generation
    items = list(eval_items(evaluation))
    # the three newest questions of that model, oldest first, personal data masked; no ideal answers
    assert [i.messages for i in items] == [
        [{"role": "user", "content": q}]
        for q in ["Can I return shoes?", "Mail [email] the invoice", "Where is order #7?"]
    ]
    assert all(i.ideal_output == "" for i in items)
    version = evaluation.dataset_version
    assert version.derived_from_id == run.dataset_version_id and version.split_counts == {
        "train": 0,
        "val": 0,
        "test": 3,
    }
    served_candidate, other = evaluation.candidates.order_by("position")
    assert (served_candidate.kind, served_candidate.run_id, other.kind) == (CandidateKind.RUN, run.pk, "base")
    assert served_candidate.label.endswith("as served")
    outputs = {g.item_id: g for g in served_candidate.generations.all()}
    assert [outputs[i.pk].output for i in items] == [
        "Served answer to Can I return shoes?",
        "Served answer to Mail [email] the invoice",
        "Served answer to Where is order #7?",
    ]
    assert outputs[items[0].pk].output_tokens == 4 and not other.generations.exists()

    # the normal generation answers for the other candidate only, then the pairs go to reviewers
    eval_generation.run_generation(evaluation.pk)
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.READY and evaluation.comparisons.count() == 3
    assert [outputs[i.pk].output for i in items] == [
        g.output for g in served_candidate.generations.order_by("item__position")
    ]  # the stored answers were not generated again
    assert other.generations.count() == 3


def test_a_sample_needs_a_tuned_model_a_rubric_and_matching_rows_and_only_evaluators_make_one(team, served):
    run, model, rubric = served
    url = reverse("traffic_review", kwargs={"slug": team.project.slug})
    pm = team.client("pm")

    def refused(**fields) -> str:
        body = {"model": model, "size": "3", "challenger": "base", "rubric": rubric.pk, **fields}
        return pm.post(url, body, follow=True).content.decode()

    assert "Choose the model to review in the Model filter first" in refused(model="")
    assert "not a tuned model" in refused(model="tiny-secret-llama")
    assert "A sample holds 1 to 200 questions" in refused(size="0")
    assert "Choose a rubric" in refused(rubric="999")
    assert "is listed twice" in refused(challenger=f"run:{run.pk}")
    assert "No stored answers match these filters" in refused(meta_key="shop", meta_value="us")
    assert not Evaluation.objects.exists()
    assert team.client("designer").post(url, {"model": model, "size": "3"}).status_code == 403
    assert team.client("reviewer").post(url, {"model": model, "size": "3"}).status_code == 403
    page = pm.get(reverse("traffic", kwargs={"slug": team.project.slug}), {"model": model}).content.decode()
    assert "Review a sample blind" in page and f'value="run:{run.pk}"' in page
    # filtering in place (htmx) redraws the sample form with the new filters
    partial = pm.get(reverse("traffic", kwargs={"slug": team.project.slug}), {"model": model}, HTTP_HX_REQUEST="true")
    form = partial.content.decode()[partial.content.decode().index('id="traffic-review"') :]
    assert f'name="model" value="{model}"' in form and "<html" not in partial.content.decode()
    assert (
        "Review a sample blind"
        not in team.client("designer").get(reverse("traffic", kwargs={"slug": team.project.slug})).content.decode()
    )
