"""Pages speak the user's language: the shared template filters, durations and hyperparameters in words,
the launch estimate as a sentence, no server paths, forms that start from the obvious choice, empty states
that say what to do, and a next step per role on the project overview."""

from __future__ import annotations

import pytest
from django.template import Context, Template

from ftstudio.templatetags.studio import duration, parameters, status_badge


def visible(html: str) -> str:
    """The words a person reads: the page without its tags, attributes and scripts."""
    import html as html_lib
    import re

    return html_lib.unescape(re.sub(r"<[^>]*>", " ", re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", html)))


@pytest.mark.parametrize(
    "seconds,words",
    [
        (0, "0 s"),
        (12, "12 s"),
        (59.6, "1 min"),
        (60, "1 min"),
        (200, "3 min 20 s"),
        (3599, "59 min 59 s"),
        (3600, "1 h"),
        (3900, "1 h 5 min"),
        (3929, "1 h 5 min"),
        (90061, "25 h 1 min"),
        ("42", "42 s"),
    ],
)
def test_duration_says_seconds_in_minutes_and_hours(seconds, words):
    assert duration(seconds) == words


@pytest.mark.parametrize(
    "count,words",
    [
        (134_515_008, "135M parameters"),
        (1_543_714_304, "1.54B parameters"),
        (7_000_000_000, "7B parameters"),
        (None, ""),
    ],
)
def test_parameters_says_a_model_size_in_millions_and_billions(count, words):
    assert parameters(count) == words


@pytest.mark.parametrize("value", [None, "", "soon"])
def test_duration_of_nothing_is_empty(value):
    assert duration(value) == ""


@pytest.mark.parametrize(
    "status,css",
    [
        ("succeeded", "ok"),
        ("ready", "ok"),
        ("approved", "ok"),
        ("done", "ok"),
        ("failed", "bad"),
        ("cancelled", "bad"),
        ("rejected", "bad"),
        ("bad", "bad"),
        ("queued", "warn"),
        ("running", "warn"),
        ("generating", "warn"),
        ("warn", "warn"),
        ("draft", ""),
    ],
)
def test_status_badge_gives_one_colour_per_state_everywhere(status, css):
    assert status_badge(status) == css


def test_the_filters_load_in_any_template():
    html = Template('{% load studio %}<span class="badge {{ s|status_badge }}">{{ t|duration }}</span>').render(
        Context({"s": "failed", "t": 4182})
    )
    assert html == '<span class="badge bad">1 h 9 min</span>'


# --- htmx: a finished background job reloads the page with HX-Refresh, not an inline script --------------
def test_a_finished_quality_report_reloads_the_page_by_hx_refresh(team):
    from apps.datasets.models import QualityReport

    QualityReport.objects.create(project=team.project, status="done", progress=100)
    response = team.client("designer").get("/p/support/data/quality/?poll=1", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Refresh"] == "true"
    assert b"<script" not in response.content


def test_pages_with_keyboard_shortcuts_load_them_from_static_files(team):
    from apps.datasets.models import Example

    example = Example.objects.create(
        project=team.project, messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    )
    html = team.client("designer").get(f"/p/support/data/examples/{example.pk}/").content.decode()
    assert 'src="/static/js/labelling.js"' in html
    assert "<script>" not in html and "addEventListener" not in html
    from django.contrib.staticfiles import finders

    for name in ("labelling.js", "review.js"):
        assert "keydown" in open(finders.find(f"js/{name}")).read()


# --- runs in words ---------------------------------------------------------------------------------------
def _base_model():
    from apps.runs.models import BaseModel

    return BaseModel.objects.get_or_create(
        name="house-llama",
        defaults=dict(
            display_name="House Llama",
            source_kind="local",
            source="/srv/models/house-llama",
            architecture="LlamaForCausalLM",
            parameter_count=135_000_000,
            context_length=2048,
            has_chat_template=True,
        ),
    )[0]


def _finished_run(team, **fields):
    from datetime import timedelta

    from django.utils import timezone

    from apps.runs import launching
    from apps.runs.models import Run
    from tests.runs_setup import small_version

    version = small_version(team.project)
    model = _base_model()
    hp = launching.resolve_hyperparameters("quick", {"max_steps": 30})
    started = timezone.now() - timedelta(minutes=10)
    values = {
        "project": team.project,
        "name": "house-style",
        "dataset_version": version,
        "base_model": model,
        "preset": "quick",
        "hyperparameters": hp,
        "status": "succeeded",
        "step": 30,
        "total_steps": 30,
        "estimate": launching.estimate_run(base_model=model, dataset_version=version, hyperparameters=hp),
        "started_at": started,
        "finished_at": started + timedelta(seconds=200),
        "adapter_path": "/srv/studio-media/runs/1/adapter",
        "checkpoint_path": "/srv/studio-media/runs/1/checkpoints/checkpoint-30",
        "log_tail": "resuming from /srv/studio-media/runs/1/checkpoints/checkpoint-20\nsaved adapter to "
        "/srv/studio-media/runs/1/adapter",
        "created_by": team.pm,
        **fields,
    }
    return Run.objects.create(**values)


def test_the_run_page_shows_labels_units_minutes_and_no_server_path(team):
    run = _finished_run(team)
    html = team.client("pm").get(run.get_absolute_url()).content.decode()
    assert "LoRA rank" in html and "Learning rate" in html and "Max sequence length" in html
    assert "House Llama (135M parameters)" in html
    assert "256 tokens" in html and "8 examples" in html and "attention query, attention key" in html
    assert 'took <span id="run-took">3 min 20 s</span>' in html
    assert "on this worker;" in html and "30</span> steps." in html
    for internal in (
        "lora_r",
        "max_seq_length",
        "learning_rate",
        "q_proj",
        "memory_mb",
        "throughput_source",
        "/srv/",
        "studio-media",
    ):
        assert internal not in html, internal
    assert "…/checkpoint-20" in html and "…/adapter" in html  # the log still says what happened


def test_a_running_run_says_how_long_is_left_in_minutes(team):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    run = _finished_run(
        team,
        status="running",
        step=10,
        finished_at=None,
        started_at=now - timedelta(seconds=100),
        heartbeat_at=now,
        adapter_path="",
    )
    html = team.client("pm").get(run.get_absolute_url()).content.decode()
    assert '<span id="run-eta">3 min 20 s left</span>' in html  # 10 s a step, 20 steps to go
    assert " s</span>" not in html.replace("3 min 20 s</span>", "")


def test_compare_labels_the_hyperparameters_and_marks_the_ones_that_differ(team):
    first = _finished_run(team)
    second = _finished_run(team, name="bigger", hyperparameters={**first.hyperparameters, "lora_r": 32})
    html = team.client("designer").get("/p/support/runs/compare/", {"a": first.pk, "b": second.pk}).content.decode()
    assert (
        '<tr class="differs"><th scope="row" title="size of the adapter: larger learns more and trains slower">LoRA '
        "rank</th><td>8</td><td>32</td>" in html
    )
    assert "3 min 20 s" in html and "lora_r" not in html and "/var/" not in html


def test_the_launch_form_shows_the_estimate_as_a_sentence_before_any_change(team):
    from tests.factories import make_dataset_version
    from tests.runs_setup import small_version, support_conversations

    small_version(team.project)
    newest = make_dataset_version(team.project, {"train": support_conversations(40)})
    _base_model()
    html = team.client("pm").get("/p/support/runs/new/").content.decode()
    assert f'<option value="{newest.pk}" selected>' in html
    assert 'on this worker; <span id="estimate-steps">5</span> steps.' in html  # 40 examples, batch 8, 1 epoch
    assert "40 training examples" in html and "tokens/s (assumed" in html
    assert "About " in html or "Under a minute" in html
    assert "LoRA rank" in html and "Max sequence length (tokens)" in html and "lora_r" not in visible(html)


def test_the_launch_form_without_a_version_says_to_freeze_one(team):
    _base_model()
    html = team.client("pm").get("/p/support/runs/new/").content.decode()
    assert "No frozen dataset version yet" in html and "freeze a version" in html


# --- forms start from the obvious choice -----------------------------------------------------------------
def test_the_new_evaluation_form_preselects_the_newest_version_and_the_newest_rubric(team):
    from datetime import timedelta

    from django.utils import timezone

    from apps.evaluations import services
    from apps.evaluations.models import Rubric, Scale
    from tests.eval_setup import make_version

    make_version(team.project)
    newest_version = make_version(team.project)
    criteria = [services.CriterionSpec("Tone", "Greets by name", Scale.PASS_FAIL, {"1": "yes", "0": "no"})]
    older = services.create_rubric(project=team.project, name="Accuracy", criteria=criteria)
    newest = services.create_rubric(project=team.project, name="House style", criteria=criteria)
    Rubric.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(days=1))
    html = team.client("pm").get("/p/support/evals/new/").content.decode()
    assert f'<option value="{newest_version.pk}" selected>v{newest_version.number}' in html
    assert f'<option value="{newest.pk}" selected>House style v1</option>' in html
    assert "evaluation-prerequisites" not in html


def test_the_new_evaluation_form_says_what_is_missing_first(team):
    html = visible(team.client("pm").get("/p/support/evals/new/").content.decode())
    assert "Before an evaluation: freeze a dataset version" in " ".join(html.split())
    assert "write a rubric" in html


# --- empty states say what to do next ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "url,role,words",
    [
        ("/p/support/runs/", "pm", "Launch one from a frozen dataset version"),
        ("/p/support/runs/", "designer", "A PM launches runs from a frozen dataset version"),
        (
            "/p/support/data/versions/",
            "designer",
            "Approve examples on the Examples page (each with a split), then freeze",
        ),
        ("/p/support/data/versions/", "reviewer", "A designer or PM freezes the approved examples into a version"),
        ("/p/support/data/", "designer", "No examples yet: import a file (OpenAI chat JSONL"),
        ("/p/support/evals/", "pm", "Once a run has finished, create one"),
        ("/p/support/evals/", "reviewer", "your pairs will then wait in the review queue"),
        ("/p/support/evals/rubrics/", "designer", "Write one : its criteria are what reviewers judge"),
        ("/p/support/evals/review/", "reviewer", "Pairs appear here once a PM has created an evaluation"),
        ("/p/support/runs/compare/", "designer", "No runs to compare yet."),
    ],
)
def test_empty_list_pages_say_what_to_do_next(team, url, role, words):
    response = team.client(role).get(url)
    assert response.status_code == 200
    assert words in " ".join(visible(response.content.decode()).split())


# --- the project overview: each role's next step ------------------------------------------------------------
def _overview(team, role) -> str:
    html = team.client(role).get("/p/support/").content.decode()
    start = html.index('id="next-steps"')
    return " ".join(visible(html[start : html.index("</section>", start)]).split())


def test_an_empty_project_tells_the_designer_to_import_and_the_pm_what_comes_first(team):
    assert "No examples yet: import a file of conversations to start. Import examples" in _overview(team, "designer")
    assert "No approved examples yet: designers label and approve them" in _overview(team, "pm")
    assert "No pairs waiting for you." in _overview(team, "reviewer")


def test_the_designer_sees_examples_to_label_and_the_quality_report_to_run(team):
    from apps.datasets.models import Example

    for i in range(3):
        Example.objects.create(
            project=team.project,
            messages=[{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "A"}],
            content_hash=str(i),
        )
    html = team.client("designer").get("/p/support/").content.decode()
    panel = _overview(team, "designer")
    assert "3 examples to label" in panel and "Label examples" in panel
    assert 'href="/p/support/data/?status=draft"' in html
    assert "No quality report yet: run one" in panel and "No rubric yet" in panel


def test_the_pm_sees_a_version_to_freeze_a_run_to_launch_and_an_evaluation_to_create(team):
    from apps.datasets.models import Example

    Example.objects.create(
        project=team.project,
        status="approved",
        split="train",
        content_hash="a",
        messages=[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    )
    assert "1 approved example and no version yet: freeze them" in _overview(team, "pm")
    run = _finished_run(team)  # freezes v1 (after the example) and finishes a run on it
    panel = _overview(team, "pm")
    assert "freeze" not in panel and "v1 has no run yet" not in panel
    assert f"{run} has finished and is in no evaluation" in panel and "Create an evaluation" in panel


def test_the_reviewer_sees_how_many_pairs_wait_and_nothing_of_what_is_behind_them(
    team, settings, tmp_path, tiny_model_dir
):
    from tests.eval_setup import RUN_NAME, make_evaluation

    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, fake=True, test_count=2)
    panel = _overview(team, "reviewer")
    assert "6 pairs waiting for you to judge, blind. Start reviewing" in panel  # 2 items x 3 candidate pairs
    html = team.client("reviewer").get("/p/support/").content.decode()
    assert RUN_NAME not in html and "Tiny Secret Llama" not in html
    assert "has finished and is in no evaluation" not in _overview(team, "pm")  # its run is a candidate


def test_a_refused_launch_names_the_hyperparameter_by_its_label(team):
    from tests.runs_setup import small_version

    version = small_version(team.project)
    model = _base_model()
    html = (
        team.client("pm")
        .post(
            "/p/support/runs/new/",
            {
                "dataset_version": version.pk,
                "base_model": model.pk,
                "preset": "quick",
                "lora_r": 300,
                "launch_without_prompt": "on",
            },
        )
        .content.decode()
    )
    assert "LoRA rank must be between 1 and 256; got 300." in html
    assert "lora_r" not in visible(html)
