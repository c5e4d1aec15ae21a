"""Automatic checks in the rubric: written in the rubric form, refused when they could never run, versioned with
the rubric, run on the worker for every output (idempotently, queued when generation finishes) and shown on the
results page beside the reviewers' scores of their criterion."""

import pytest

from apps.evaluations import automatic, generation, selectors
from apps.evaluations.models import AutoCheck, CheckKind, CheckResult, Generation, Rubric
from tests.eval_setup import make_evaluation
from worker.checks import KINDS, CheckSpec

pytestmark = pytest.mark.django_db

FORM = {
    "c-TOTAL_FORMS": 2,
    "c-INITIAL_FORMS": 0,
    "c-MIN_NUM_FORMS": 0,
    "c-MAX_NUM_FORMS": 20,
    "c-0-name": "Greeting",
    "c-0-scale": "pass_fail",
    "c-1-name": "Brevity",
    "c-1-scale": "likert5",
    "k-TOTAL_FORMS": 2,
    "k-INITIAL_FORMS": 0,
    "k-MIN_NUM_FORMS": 0,
    "k-MAX_NUM_FORMS": 50,
    "k-0-criterion": "Greeting",
    "k-0-kind": "starts_with",
    "k-0-text": "Hi {customer},",
    "k-1-criterion": "Brevity",
    "k-1-kind": "max_words",
    "k-1-number": "30",
}


def test_the_check_kinds_of_the_form_are_the_ones_the_worker_runs():
    assert dict(CheckKind.choices) == KINDS


def test_a_designer_adds_checks_in_the_rubric_form_and_a_new_version_keeps_them(team):
    client = team.client("designer")
    response = client.post("/p/support/evals/rubrics/new/", {**FORM, "name": "Style"})
    assert response.status_code == 302
    rubric = Rubric.objects.get(name="Style")
    assert [
        (c.criterion.name, c.kind, c.text, c.number) for c in AutoCheck.objects.order_by("criterion__position")
    ] == [("Greeting", "starts_with", "Hi {customer},", None), ("Brevity", "max_words", "", 30.0)]
    page = client.get(response["Location"]).content.decode()
    assert "starts with &quot;Hi {customer},&quot;" in page and "at most 30 words" in page
    edit = client.get(f"/p/support/evals/rubrics/{rubric.pk}/edit/").content.decode()
    assert 'value="Hi {customer},"' in edit or "Hi {customer},</textarea>" in edit
    data = {**FORM, "c-INITIAL_FORMS": 2, "k-INITIAL_FORMS": 2, "description": "v2", "k-1-number": "20"}
    assert client.post(f"/p/support/evals/rubrics/{rubric.pk}/edit/", data).status_code == 302
    v2 = Rubric.objects.get(name="Style", version=2)
    assert [c.spec for c in AutoCheck.objects.filter(criterion__rubric=v2).order_by("criterion__position")] == [
        CheckSpec("starts_with", "Hi {customer},"),
        CheckSpec("max_words", "", 20.0),
    ]
    # version 1 still has its own checks, unchanged
    assert AutoCheck.objects.get(criterion__rubric=rubric, kind="max_words").number == 30.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"k-1-kind": "regex", "k-1-text": "Hi (", "k-1-number": ""},
            "Criterion 2 (Brevity), automatic check 1: the regular expression &#x27;Hi (&#x27; does not compile: "
            "missing ) at position 4.",
        ),
        (
            {"k-1-kind": "json_schema", "k-1-text": '{"type": 5}', "k-1-number": ""},
            "automatic check 1: the schema is not a valid JSON Schema",
        ),
        (
            {"k-1-criterion": "Tone"},
            "Automatic check 2: this rubric has no criterion named &#x27;Tone&#x27; (criteria: Greeting, Brevity).",
        ),
        ({"k-1-number": ""}, "automatic check 1: &#x27;at most N words&#x27; needs a number."),
    ],
)
def test_a_check_that_could_never_run_is_refused_when_the_rubric_is_saved(team, change, message):
    response = team.client("designer").post("/p/support/evals/rubrics/new/", {**FORM, "name": "Style", **change})
    html = response.content.decode()
    assert response.status_code == 200 and message in html, html[html.find("message error") :][:600]
    assert not Rubric.objects.exists() and not AutoCheck.objects.exists()
    assert 'value="Style"' in html  # the designer's input is kept


@pytest.fixture
def checked(team, settings, tiny_model_dir, tmp_path_factory):
    """An evaluation (3 items x 3 candidates) whose inputs name the customer, with two checks on its rubric."""
    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path_factory.mktemp("adapter"), fake=True)
    for item in selectors.eval_items(evaluation):
        item.messages = [
            {"role": "user", "content": f"Customer: Cy\nMessage: where is order {item.position}?"},
            *item.messages[-1:],
        ]
        item.save()
    tone, correct = evaluation.rubric.criteria.all()
    AutoCheck.objects.create(criterion=tone, kind="starts_with", text="Hi {customer},")
    AutoCheck.objects.create(criterion=correct, kind="regex", text=r"from candidate [02]\b")
    return evaluation


def test_checks_run_on_every_output_once_and_fill_placeholders_from_the_input(checked):
    evaluation = checked
    Generation.objects.filter(candidate__position=1).update(output="Hello Cy, from candidate 1.")
    assert automatic.run_checks(evaluation.pk) == 18  # 9 outputs x 2 checks
    assert automatic.run_checks(evaluation.pk) == 0  # a second delivery finds nothing to do
    greeting = {
        (r.generation.candidate.position, r.passed) for r in CheckResult.objects.filter(check_def__kind="starts_with")
    }
    assert greeting == {(0, True), (1, False), (2, True)}
    failed = CheckResult.objects.filter(check_def__kind="starts_with", passed=False).first()
    assert failed.detail == "starts with 'Hi Cy,': no"


def test_the_results_page_shows_each_checks_pass_rate_beside_the_reviewers_scores(team, checked):
    evaluation = checked
    automatic.run_checks(evaluation.pk)
    page = team.client("pm").get(f"/p/support/evals/{evaluation.pk}/results/").content.decode()
    tone_row = page.index("<strong>Tone</strong>")
    check_row = page.index("starts with &quot;Hi {customer},&quot;")
    correct_row = page.index("<strong>Correct</strong>")
    assert tone_row < check_row < correct_row  # the check sits under its own criterion
    # every output of every candidate starts "Hi Cy,": 3 of 3, Wilson 95% CI 44-100%
    assert page[check_row:correct_row].count('100% <span class="muted">(44-100%, n=3)</span>') == 3
    regex_row = page[page.index("matches the regular expression") :]
    assert (
        '100% <span class="muted">(44-100%, n=3)</span>' in regex_row
        and '0% <span class="muted">(0-56%, n=3)</span>' in regex_row
    )


def test_checks_are_queued_when_generation_finishes(
    team, settings, tiny_model_dir, tmp_path, eager, django_capture_on_commit_callbacks
):
    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, generate=False, test_count=1)
    AutoCheck.objects.create(criterion=evaluation.rubric.criteria.first(), kind="max_words", number=1000)
    with django_capture_on_commit_callbacks(execute=True):
        generation.run_generation(evaluation.pk)
    assert CheckResult.objects.filter(generation__candidate__evaluation=evaluation, passed=True).count() == 3


def test_a_pm_runs_the_checks_of_an_existing_evaluation(team, checked, eager, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = team.client("pm").post(f"/p/support/evals/{checked.pk}/checks/")
    assert response.status_code == 302 and CheckResult.objects.count() == 18
    assert team.client("reviewer").post(f"/p/support/evals/{checked.pk}/checks/").status_code == 403


def test_an_edit_that_posts_only_the_criteria_keeps_their_checks(team):
    client = team.client("designer")
    assert client.post("/p/support/evals/rubrics/new/", {**FORM, "name": "Style"}).status_code == 302
    rubric = Rubric.objects.get(name="Style")
    criteria_only = {k: v for k, v in FORM.items() if not k.startswith("k-")}
    response = client.post(f"/p/support/evals/rubrics/{rubric.pk}/edit/", {**criteria_only, "c-INITIAL_FORMS": 2})
    assert response.status_code == 302
    assert AutoCheck.objects.filter(criterion__rubric__version=2).count() == 2


def test_the_demo_rubrics_checks_pass_its_ideal_replies_and_agree_with_the_house_style_judge():
    from apps.demo import generator
    from apps.evaluations.statistics import token_f1
    from worker.checks import input_fields, run_check, validate

    checks = {c["name"]: [CheckSpec(*spec) for spec in c["checks"]] for c in generator.RUBRIC_CRITERIA}
    for spec in (s for specs in checks.values() for s in specs):
        validate(spec)
    examples = generator.generate_examples(60)
    for example in examples:
        user = example.messages[0]["content"]
        fields = input_fields(example.messages[:1], example.metadata)
        ideal = example.ideal_output
        assert all(
            run_check(s, ideal, fields=fields, ideal=ideal, similarity=1.0).passed
            for specs in checks.values()
            for s in specs
        ), ideal
        # a reply to someone else, and one without the sign-off, fail the checks the house-style judge fails
        other = ideal.replace(f"Hi {example.metadata['customer']},", "Hi Zed,")
        unsigned = ideal.replace(generator.SIGN_OFF, "Best")
        for reply in (other, unsigned):
            style = generator.check_reply(reply, user)
            assert run_check(checks["Greets by name"][0], reply, fields=fields).passed == style.greets_by_name
            assert run_check(checks["House sign-off"][0], reply, fields=fields).passed == style.signs_off
        assert (
            run_check(checks["Answers from the facts"][0], "Hello.", similarity=token_f1("Hello.", ideal)).passed
            is False
        )


def test_each_check_is_a_grader_with_the_weight_set_in_the_rubric_form(team):
    from apps.evaluations.graders import rubric_graders
    from worker.graders import grade, item_from

    client = team.client("designer")
    form = {**FORM, "name": "Style", "k-0-weight": "2", "k-1-weight": "0"}
    response = client.post("/p/support/evals/rubrics/new/", form)
    assert response.status_code == 302
    rubric = Rubric.objects.get(name="Style")
    page = client.get(response["Location"]).content.decode()
    assert "used as a grader when training from graders, weight 2" in page
    assert "not used as a grader when training from graders" in page
    (grader,) = rubric_graders(rubric)  # the weight-0 check is left out; no judge in this project
    assert grader == {
        "type": "rubric_check",
        "name": 'Greeting: starts with "Hi {customer},"',
        "check": {"kind": "starts_with", "text": "Hi {customer},", "number": None},
        "weight": 2.0,
    }
    item = item_from([{"role": "user", "content": "Customer: Ann\nWhere is my order?"}], "Hi Ann, today.")
    assert grade(grader, {"output_text": "Hi Ann, it ships today."}, item).score == 1.0
    assert grade(grader, {"output_text": "Hello Ann."}, item).score == 0.0
    edit = client.get(f"/p/support/evals/rubrics/{rubric.pk}/edit/").content.decode()
    assert "Weight as a grader" in edit and 'name="k-0-weight" value="2.0"' in edit


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"k-0-weight": "0", "k-1-weight": "0"}, "weights as graders add up to 0"),
        ({"k-0-weight": "-1"}, "Ensure this value is greater than or equal to 0."),
    ],
)
def test_check_weights_that_could_not_grade_are_refused(team, weights, message):
    response = team.client("designer").post("/p/support/evals/rubrics/new/", {**FORM, "name": "Style", **weights})
    assert response.status_code == 200 and message in response.content.decode()
    assert not Rubric.objects.exists()
