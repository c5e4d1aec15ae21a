"""Lighter blind review: winner-only rubrics, optional scores, the stopping rule (settled or capped pairs
stop being handed out, and the PM sees why) and time per judgment."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.evaluations import review, selectors, services
from apps.evaluations.models import Assignment, Judgment, ReviewMode, Score
from tests.eval_setup import add_reviewer, make_evaluation

pytestmark = pytest.mark.django_db


def _evaluation(team, settings, tiny_model_dir, tmp_path_factory, **kwargs):
    evaluation, _ = make_evaluation(
        team, settings, tiny_model_dir, tmp_path_factory.mktemp("adapter"), fake=True, **kwargs
    )
    return evaluation


def _judge_everything(evaluation, reviewer, pick) -> int:
    """Judge every pair handed to ``reviewer``; ``pick(sides)`` returns "A", "B" or "tie"."""
    judged = 0
    while (assignment := review.next_assignment(evaluation=evaluation, reviewer=reviewer)) is not None:
        review.submit_judgment(
            assignment=assignment, reviewer=reviewer, winner=pick(selectors.sides(assignment)), scores={}
        )
        judged += 1
        assert judged < 100
    return judged


def _later_candidate_wins(sides):
    return max(sides, key=lambda s: s.candidate.position).letter


def test_winner_only_rubric_asks_no_scores_and_refuses_them(team, settings, tiny_model_dir, tmp_path_factory):
    evaluation = _evaluation(team, settings, tiny_model_dir, tmp_path_factory)
    rubric = services.revise_rubric(
        rubric=evaluation.rubric,
        description="",
        review_mode=ReviewMode.WINNER,
        criteria=services.criteria_specs(evaluation.rubric),
    )
    type(evaluation).objects.filter(pk=evaluation.pk).update(rubric=rubric)
    client = team.client("reviewer")
    url = client.post(f"/p/support/evals/review/{evaluation.pk}/next/")["Location"]
    page = client.get(url).content.decode()
    assert 'name="winner"' in page and 'name="score_' not in page
    tone = rubric.criteria.get(name="Tone")
    refused = client.post(url, {"winner": "A", f"score_A_{tone.pk}": 5})
    assert refused.status_code == 400 and "overall winner only" in refused.content.decode()
    assert not Judgment.objects.exists()
    assert client.post(url, {"winner": "B"}).status_code == 302
    assert Judgment.objects.count() == 1 and not Score.objects.exists()


def test_scores_are_optional_per_criterion_and_side(team, settings, tiny_model_dir, tmp_path_factory):
    evaluation = _evaluation(team, settings, tiny_model_dir, tmp_path_factory)
    client = team.client("reviewer")
    url = client.post(f"/p/support/evals/review/{evaluation.pk}/next/")["Location"]
    page = client.get(url).content.decode()
    assert 'name="score_A_' in page and "required> 1" not in page and "optional" in page
    tone = evaluation.rubric.criteria.get(name="Tone")
    assert client.post(url, {"winner": "A", f"score_A_{tone.pk}": 4}).status_code == 302
    score = Score.objects.get()
    assignment = Judgment.objects.get().assignment
    shown_a = assignment.comparison.candidate_2 if assignment.swapped else assignment.comparison.candidate_1
    assert (score.criterion_id, score.candidate_id, score.value) == (tone.pk, shown_a.pk, 4)


def test_a_pair_whose_interval_excludes_parity_is_no_longer_handed_out(
    team, settings, tiny_model_dir, tmp_path_factory
):
    # 12 items, 3 candidates (36 comparisons), one reviewer per pair; the later candidate always wins.
    # Stopping asks for the exact interval at 1 - 0.05/12 to exclude 50%: 9 of 9 (p = 0.0039 < 0.0042) is the
    # first such split, so each candidate pair stops after 9 of its 12 items: 27 judgments instead of 36.
    # (6 of 6 already excludes 50% at 95%; stopping there is what made false verdicts 11-20% likely.)
    evaluation = _evaluation(team, settings, tiny_model_dir, tmp_path_factory, test_count=12, reviewers_per_pair=1)
    assert _judge_everything(evaluation, team.reviewer, _later_candidate_wins) == 27
    stops = selectors.pair_stops(evaluation)
    assert {s.reason for s in stops.values()} == {"settled"} and {s.outcome.items for s in stops.values()} == {9}
    assert all(s.outcome.high < 0.5 for s in stops.values())  # the later candidate (b) is better
    assert selectors.remaining_for(evaluation, team.reviewer) == 0
    # another reviewer joining later gets nothing either
    assert review.next_assignment(evaluation=evaluation, reviewer=add_reviewer(team, "late")) is None
    page = team.client("pm").get(f"/p/support/evals/{evaluation.pk}/").content.decode()
    assert (
        "When review stops" in page
        and page.count("stopped: settled (its interval excludes parity even corrected for repeated looks)") == 3
    )


def test_an_undecided_pair_stops_at_the_cap_of_judged_items(team, settings, tiny_model_dir, tmp_path_factory):
    evaluation = _evaluation(
        team, settings, tiny_model_dir, tmp_path_factory, test_count=8, reviewers_per_pair=1, pair_cap=3
    )
    assert _judge_everything(evaluation, team.reviewer, lambda sides: "tie") == 9
    assert {(s.reason, s.outcome.items) for s in selectors.pair_stops(evaluation).values()} == {("cap", 3)}
    page = team.client("pm").get(f"/p/support/evals/{evaluation.pk}/").content.decode()
    assert page.count("stopped: the cap of 3 judged items is reached") == 3


def test_without_a_cap_an_undecided_pair_is_reviewed_to_the_end(team, settings, tiny_model_dir, tmp_path_factory):
    evaluation = _evaluation(team, settings, tiny_model_dir, tmp_path_factory, test_count=4, reviewers_per_pair=1)
    assert _judge_everything(evaluation, team.reviewer, lambda sides: "tie") == 12
    with pytest.raises(services.EvaluationError, match="at least 1"):
        services.create_evaluation(
            project=team.project,
            dataset_version=evaluation.dataset_version,
            rubric=evaluation.rubric,
            candidates=[services.CandidateSpec("base"), services.CandidateSpec("prompt")],
            base_model=evaluation.base_model,
            pair_cap=0,
            enqueue=False,
        )


def test_time_per_judgment_runs_from_the_page_being_shown_and_the_pm_sees_medians(
    team, settings, tiny_model_dir, tmp_path_factory
):
    evaluation = _evaluation(team, settings, tiny_model_dir, tmp_path_factory, reviewers_per_pair=2)
    second = add_reviewer(team, "second")
    for reviewer, took in ((team.reviewer, 10), (team.reviewer, 30), (second, 50)):
        client = team.client("reviewer") if reviewer == team.reviewer else None
        if client is None:
            from django.test import Client

            client = Client()
            client.force_login(reviewer)
        url = client.post(f"/p/support/evals/review/{evaluation.pk}/next/")["Location"]
        assignment = Assignment.objects.get(token=url.rstrip("/").rsplit("/", 1)[1])
        Assignment.objects.filter(pk=assignment.pk).update(created_at=timezone.now() - timedelta(hours=1))
        client.get(url)  # the page is shown: the clock starts here, not when the pair was handed out an hour ago
        Assignment.objects.filter(pk=assignment.pk).update(shown_at=timezone.now() - timedelta(seconds=took))
        assert client.post(url, {"winner": "tie"}).status_code == 302
        assert Judgment.objects.get(assignment=assignment).seconds == pytest.approx(took, abs=2)
        Judgment.objects.filter(assignment=assignment).update(
            seconds=took
        )  # the page's medians, without the test's own delay
    page = team.client("pm").get(f"/p/support/evals/{evaluation.pk}/").content.decode()
    assert 'median <span id="median-seconds">30 s</span> per pair over 3 timed judgments' in page
    assert "<td>reviewer</td><td>2</td>" in page and "<td>20 s</td>" in page  # reviewer's median of 10 and 30
    assert "<td>50 s</td>" in page


def test_a_designer_chooses_winner_only_in_the_rubric_form_and_the_next_version_keeps_it(team):
    client = team.client("designer")
    form = {
        "c-TOTAL_FORMS": 1,
        "c-INITIAL_FORMS": 0,
        "c-MIN_NUM_FORMS": 0,
        "c-MAX_NUM_FORMS": 20,
        "c-0-name": "Tone",
        "c-0-scale": "likert5",
    }
    response = client.post("/p/support/evals/rubrics/new/", {**form, "name": "Quick", "review_mode": "winner"})
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert '<strong id="review-mode">Overall winner only</strong>' in page
    rubric = services.Rubric.objects.get(name="Quick")
    edited = client.post(
        f"/p/support/evals/rubrics/{rubric.pk}/edit/", {**form, "c-INITIAL_FORMS": 1, "description": "v2"}
    )
    assert edited.status_code == 302, (edited.context["form"].errors, edited.context["formset"].errors)
    assert services.Rubric.objects.get(name="Quick", version=2).review_mode == ReviewMode.WINNER
