"""Blind review: identities hidden, sides randomized, assignment rules, bad judgments, results and permissions."""

import csv
import io
import re

import pytest
from django.test import Client

from apps.evaluations import review, selectors
from apps.evaluations.models import Assignment, Comparison, Generation, Judgment, Rubric
from tests.eval_setup import MODEL_NAME, RUN_NAME, add_reviewer, judge, make_evaluation

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready(team, settings, tiny_model_dir, tmp_path_factory):
    return make_evaluation(team, settings, tiny_model_dir, tmp_path_factory.mktemp("adapter"), fake=True)


def test_reviewer_cannot_see_which_model_wrote_which_side(team, ready):
    evaluation, run = ready
    Generation.objects.filter(candidate__evaluation=evaluation).update(output="Hi Cy, your order ships today.")
    client = team.client("reviewer")
    response = client.post(f"/p/support/evals/review/{evaluation.pk}/next/")
    page = client.get(response["Location"])
    html = page.content.decode()
    assert (
        page.status_code == 200
        and "Answer A" in html
        and "Answer B" in html
        and "Hi Cy, your order ships today." in html
    )
    secrets = [
        MODEL_NAME,
        "Tiny Secret Llama",
        RUN_NAME,
        f"run:{run.pk}",
        f"run #{run.pk}",
        "Prompt-only",
        "baseline",
        "Base model",
        "prompt",
        *evaluation.candidates.values_list("label", flat=True),
    ]
    for secret in secrets:
        assert secret.lower() not in html.lower(), f"{secret!r} leaks into the review page"
    # the URL is an opaque token, not a candidate, run or comparison id
    assert re.fullmatch(r"/p/support/evals/review/item/[0-9a-f-]{36}/", response["Location"])
    assert html.count('type="hidden"') == html.count('name="csrfmiddlewaretoken"')  # no candidate ids in forms


def test_each_pair_gets_the_configured_reviewers_and_never_the_same_reviewer_twice(team, ready):
    evaluation, _ = ready
    extra = add_reviewer(team, "second-reviewer")
    third = add_reviewer(team, "third-reviewer")
    claimed = {}
    for user in (team.reviewer, extra, third, team.pm):
        claimed[user.username] = []
        while (a := review.next_assignment(evaluation=evaluation, reviewer=user)) is not None:
            claimed[user.username].append(a.comparison_id)
            review.submit_judgment(
                assignment=a,
                reviewer=user,
                winner="A",
                scores={(s, c.pk): 1 for s in "AB" for c in evaluation.rubric.criteria.all()},
            )
    for name, pairs in claimed.items():
        assert len(pairs) == len(set(pairs)), f"{name} got a pair twice"
    per_pair = Assignment.objects.filter(evaluation=evaluation).values_list("comparison_id", flat=True)
    assert sorted(per_pair) == sorted(
        list(Comparison.objects.filter(evaluation=evaluation).values_list("pk", flat=True)) * 2
    )
    assert len(claimed["third-reviewer"]) == 0  # 9 pairs x 2 reviewers are all taken by the first two
    assert len(claimed["pm"]) == 0  # the PM launched it: they have seen what is compared, so they never judge it
    # the PM sees each reviewer's progress
    page = team.client("pm").get(f"/p/support/evals/{evaluation.pk}/").content.decode()
    assert "Reviewer progress" in page and "second-reviewer" in page


def test_a_pair_cannot_be_judged_twice_nor_scored_outside_its_scale(team, ready):
    evaluation, _ = ready
    client = team.client("reviewer")
    tone, correct = evaluation.rubric.criteria.all()
    response = client.post(f"/p/support/evals/review/{evaluation.pk}/next/")
    url = response["Location"]
    bad = client.post(
        url,
        {
            "winner": "A",
            f"score_A_{tone.pk}": 7,
            f"score_B_{tone.pk}": 3,
            f"score_A_{correct.pk}": 1,
            f"score_B_{correct.pk}": 0,
        },
    )
    assert bad.status_code == 400
    assert "7 is outside the 1-5 scale of &#x27;Tone&#x27; (side A)" in bad.content.decode()
    assert not Judgment.objects.exists()
    good = client.post(
        url,
        {
            "winner": "B",
            f"score_A_{tone.pk}": 2,
            f"score_B_{tone.pk}": 5,
            f"score_A_{correct.pk}": 0,
            f"score_B_{correct.pk}": 1,
            "comment": "B greets by name",
        },
    )
    assert good.status_code == 302
    again = client.post(
        url,
        {
            "winner": "A",
            f"score_A_{tone.pk}": 5,
            f"score_B_{tone.pk}": 5,
            f"score_A_{correct.pk}": 1,
            f"score_B_{correct.pk}": 1,
        },
    )
    assert again.status_code == 400 and "already judged this pair" in again.content.decode()
    judgment = Judgment.objects.get()
    assignment = judgment.assignment
    shown_b = assignment.comparison.candidate_1 if assignment.swapped else assignment.comparison.candidate_2
    assert judgment.winner == shown_b  # stored against the candidate, whatever side it was shown on
    assert {(s.candidate_id, s.criterion.name): s.value for s in judgment.scores.all()}[(shown_b.pk, "Tone")] == 5
    # someone else's pair is not found
    assert team.client("pm").get(url).status_code == 404


def test_results_stay_hidden_from_a_reviewer_until_they_have_judged(team, ready):
    evaluation, _ = ready
    reviewer = team.client("reviewer")
    assert reviewer.get(f"/p/support/evals/{evaluation.pk}/results/").status_code == 403
    early = team.client("pm").get(f"/p/support/evals/{evaluation.pk}/results/")  # the PM who launched it may
    assert early.status_code == 200 and "No verdict yet" in early.content.decode()
    assert reviewer.get(f"/p/support/evals/{evaluation.pk}/judgments.csv").status_code == 403
    for _ in range(9):
        response, _ = judge(reviewer, "support", evaluation, winner="B")
        assert response.status_code == 302
    assert reviewer.get(f"/p/support/evals/{evaluation.pk}/results/").status_code == 200
    late = Client()
    late.force_login(add_reviewer(team, "late-reviewer"))  # 9 pairs still need a second reviewer: theirs
    assert late.get(f"/p/support/evals/{evaluation.pk}/results/").status_code == 403


@pytest.fixture
def ready8(team, settings, tiny_model_dir, tmp_path_factory):
    # reviewed to the end: a settled pair would otherwise stop after 6 items (see test_eval_lighter_review.py)
    return make_evaluation(
        team,
        settings,
        tiny_model_dir,
        tmp_path_factory.mktemp("adapter"),
        fake=True,
        test_count=8,
        stop_when_settled=False,
    )


def test_results_page_shows_verdict_intervals_agreement_and_examples(team, ready8):
    evaluation, run = ready8
    Generation.objects.filter(candidate__evaluation=evaluation, candidate__kind="run").update(
        output="<script>alert('x')</script>"
    )
    for user in (team.reviewer, add_reviewer(team, "second-reviewer")):
        while (a := review.next_assignment(evaluation=evaluation, reviewer=user)) is not None:
            letter = (
                next(s.letter for s in selectors.sides(a) if s.candidate.kind == "run")
                if a.comparison.candidate_2.kind == "run"
                else "tie"
            )
            review.submit_judgment(
                assignment=a,
                reviewer=user,
                winner=letter,
                comment='=HYPERLINK("x")',
                scores={(s, c.pk): 1 for s in "AB" for c in evaluation.rubric.criteria.all()},
            )
    response = team.client("designer").get(f"/p/support/evals/{evaluation.pk}/results/")
    html = response.content.decode()
    assert response.status_code == 200
    # the run won every judgment of all 8 items against the reference baseline (base and prompt tie in their
    # own head to head: the prompt baseline is the harder to beat); exact 95% CI of 8/8: 63-100%
    run_label = f"Tuned run #{run.pk} (zebra-run)"
    assert (
        f"{run_label} is better than Prompt-only baseline: {run_label} was preferred on 8 of 8 items where "
        "reviewers picked a side (100%, 95% CI 63-100%); 8 items judged, 16 judgments."
    ) in html
    assert (
        '<p class="muted" id="reference-baseline">Each tuned run is measured against Prompt-only baseline: the '
        "baselines&#x27; own head to head has not separated them, and the prompt-only baseline is the harder one "
        "to beat. The tuned runs&#x27; own judgments play no part in that choice.</p>"
    ) in html
    assert "Bradley-Terry ranking" in html and "Cohen&#x27;s kappa = 1.00" in html and "<svg" in html
    assert "same verdict on 100% of the 24 pairs judged more than once" in html
    assert "1.230" in html  # the run's validation loss
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html and "<script>alert" not in html
    disagree = team.client("pm").get(f"/p/support/evals/{evaluation.pk}/results/?show=candidates").content.decode()
    assert "8 examples." in disagree  # base vs prompt were ties on every example
    export = team.client("pm").get(f"/p/support/evals/{evaluation.pk}/judgments.csv")
    rows = list(csv.DictReader(io.StringIO(export.content.decode())))
    assert len(rows) == 48 and {r["reviewer"] for r in rows} == {"second-reviewer", "reviewer"}
    assert rows[0]["comment"].startswith("'=")  # no spreadsheet formulas


def test_editing_a_rubric_makes_a_new_version_and_evaluations_keep_theirs(team, ready):
    evaluation, _ = ready
    rubric = evaluation.rubric
    client = team.client("designer")
    data = {
        "description": "stricter",
        "c-TOTAL_FORMS": 2,
        "c-INITIAL_FORMS": 0,
        "c-MIN_NUM_FORMS": 0,
        "c-MAX_NUM_FORMS": 20,
        "c-0-name": "Tone",
        "c-0-scale": "likert5",
        "c-0-anchors": "5: perfect\n1: off",
        "c-1-name": "",
        "c-1-scale": "likert5",
    }
    response = client.post(f"/p/support/evals/rubrics/{rubric.pk}/edit/", data)
    assert response.status_code == 302
    new = Rubric.objects.get(project=team.project, name="House style", version=2)
    assert list(new.criteria.values_list("name", flat=True)) == ["Tone"]
    assert new.criteria.get().anchors == {"5": "perfect", "1": "off"}
    evaluation.refresh_from_db()
    assert evaluation.rubric_id == rubric.pk and rubric.criteria.count() == 2
    bad = client.post("/p/support/evals/rubrics/new/", {**data, "name": "Other", "c-0-anchors": "9: too high"})
    assert bad.status_code == 200 and "anchor levels [&#x27;9&#x27;] are not on the 1-5 scale" in bad.content.decode()
    assert team.client("reviewer").post("/p/support/evals/rubrics/new/", data).status_code == 403


def test_pm_creates_an_evaluation_from_the_form(
    team, settings, tiny_model_dir, tmp_path, django_capture_on_commit_callbacks
):
    from tests.eval_setup import make_rubric, make_version, register_tiny_model

    base = register_tiny_model(settings, tiny_model_dir)
    version = make_version(team.project)
    rubric = make_rubric(team.project)
    client = team.client("pm")
    assert client.get("/p/support/evals/new/").status_code == 200
    form = {
        "dataset_version": version.pk,
        "rubric": rubric.pk,
        "base_model": base.pk,
        "include_base": "on",
        "max_new_tokens": 4,
        "seed": 0,
        "few_shot": 0,
        "reviewers_per_pair": 1,
    }
    lonely = client.post("/p/support/evals/new/", form)
    assert "Pick at least two candidates" in lonely.content.decode()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/p/support/evals/new/", {**form, "include_prompt": "on"})
    assert response.status_code == 302 and len(callbacks) == 1  # generation is queued once the row is committed
    assert team.client("designer").post("/p/support/evals/new/", form).status_code == 403


def test_the_evaluation_form_offers_versions_a_person_froze_and_refuses_an_experiments_subset(
    team, settings, tiny_model_dir
):
    from apps.datasets.versions import freeze_subset
    from apps.evaluations.models import Evaluation
    from tests.eval_setup import make_rubric, make_version, register_tiny_model
    from tests.test_runs_launch import version_choices

    base = register_tiny_model(settings, tiny_model_dir)
    version = make_version(team.project)
    first_train = version.items.filter(split="train").order_by("position").first().position
    subset = freeze_subset(source=version, train_positions=[first_train], note="experiment point")
    client = team.client("pm")
    assert version_choices(client.get("/p/support/evals/new/").content.decode()) == [str(version.pk)]
    refused = client.post(
        "/p/support/evals/new/",
        {
            "dataset_version": subset.pk,
            "rubric": make_rubric(team.project).pk,
            "base_model": base.pk,
            "include_base": "on",
            "include_prompt": "on",
            "max_new_tokens": 4,
            "seed": 0,
            "few_shot": 0,
            "reviewers_per_pair": 1,
        },
    )
    assert refused.status_code == 200
    assert f"v{subset.number} is part of v{version.number}, a subset an experiment froze" in refused.content.decode()
    assert not Evaluation.objects.exists()
