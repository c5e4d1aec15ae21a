"""The results page renders for every state an evaluation passes through: before any judgment, right after
the first one (it returned 500 then), all ties, one reviewer, a candidate that always wins, and random
judgment sets; its verdict never claims more than its interval."""

import random
import re

import pytest

from apps.evaluations import results as evaluations_results
from apps.evaluations import review, selectors
from apps.evaluations.models import Assignment, Judgment
from tests.eval_setup import add_reviewer, make_evaluation

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready(team, settings, tiny_model_dir, tmp_path_factory):
    evaluation, run = make_evaluation(
        team, settings, tiny_model_dir, tmp_path_factory.mktemp("adapter"), fake=True, test_count=4
    )
    return evaluation


def judge(evaluation, user, pick) -> bool:
    """One judgment by ``user``; ``pick(assignment)`` returns "A", "B" or "tie". False when nothing is left."""
    a = review.next_assignment(evaluation=evaluation, reviewer=user)
    if a is None:
        return False
    review.submit_judgment(
        assignment=a,
        reviewer=user,
        winner=pick(a),
        scores={(s, c.pk): 1 for s in "AB" for c in evaluation.rubric.criteria.all()},
    )
    return True


def run_side(a) -> str:
    """The tuned run's side where it is in the pair, else a tie."""
    for side in selectors.sides(a):
        if side.candidate.kind == "run":
            return side.letter
    return "tie"


def results_page(team, evaluation) -> str:
    response = team.client("designer").get(f"/p/support/evals/{evaluation.pk}/results/")
    assert response.status_code == 200
    return response.content.decode()


def test_the_page_renders_before_and_right_after_the_first_judgment(team, ready):
    assert "No verdict yet" in results_page(team, ready)
    judge(ready, team.reviewer, lambda a: "A")
    html = results_page(team, ready)
    assert "1 judgment of 4 items" in html and "Head to head" in html
    # one judged item: resampling cannot move a strength, so the ranking says so instead of a point-wide interval
    assert html.count("(no interval yet)") == len(
        evaluations_results.evaluation_results(ready, bootstrap=20).candidates
    )


def test_all_ties_read_as_level(team, ready):
    while judge(ready, team.reviewer, lambda a: "tie"):
        pass
    html = results_page(team, ready)
    assert "are level: reviewers preferred neither on any item (4 items judged, 4 judgments)" in html
    assert "(no interval yet)" in html and "1.00 (1.00-1.00)" not in html


def test_one_reviewer_and_a_run_that_always_wins(team, ready):
    while judge(ready, team.reviewer, run_side):
        pass
    html = results_page(team, ready)
    # 4 of 4 items: 95% CI 39.8-100% (printed outward: 39) includes parity, not "better"; 2 more items settle it
    assert "No clear difference yet between Tuned run" in html and "(100%, 95% CI 39-100%)" in html
    assert "is better than" not in html
    assert "more than the 0 left unjudged: add test examples" in html
    assert "Reviewer agreement" in html and "No pair has two judgments yet." in html


def test_random_judgment_sets_always_render_a_verdict_that_matches_its_interval(team, ready):
    rng = random.Random(5)
    reviewers = [team.reviewer, add_reviewer(team, "r2"), add_reviewer(team, "r3")]
    for _ in range(10):
        Judgment.objects.filter(evaluation=ready).delete()
        Assignment.objects.filter(evaluation=ready).delete()
        ready.reviewers_per_pair = rng.randint(1, 3)
        ready.save()
        bias = rng.choice([0.0, 0.5, 0.9, 1.0])
        for user in reviewers[: ready.reviewers_per_pair]:
            for _ in range(rng.randint(0, 12)):
                if not judge(
                    ready,
                    user,
                    lambda a, bias=bias: run_side(a)
                    if rng.random() < bias
                    else rng.choice("AB")
                    if rng.random() < 0.7
                    else "tie",
                ):
                    break
        html = results_page(team, ready)
        for verdict in evaluations_results.evaluation_results(ready, bootstrap=20).verdicts:
            ci = re.search(r"95% CI ([\d.]+)-([\d.]+)%", verdict.sentence)
            if "is better than" in verdict.sentence:
                low, high = map(float, ci.groups())
                assert low > 50 or high < 50, verdict.sentence  # never printed as reaching 50%
                assert verdict.pair.winner is not None
            else:
                assert verdict.pair.winner is None
            assert (
                re.search(r"\d+ items? judged, \d+ judgments?", verdict.sentence)
                or "no judgments yet" in verdict.sentence
            )
        assert "Head to head" in html


def test_criterion_scores_count_each_output_once(team, ready):
    """Two reviewers, and each output appears in two comparisons: four scores per output, one number."""
    for user in (team.reviewer, add_reviewer(team, "r2")):
        while judge(ready, user, lambda a: "tie"):
            pass
    results = evaluations_results.evaluation_results(ready, bootstrap=10)
    for row in results.criteria:
        for cell in row["cells"]:
            assert cell["m"].n == 4  # 4 test items: 4 outputs per candidate, not 16 scores
            assert cell["m"].low < cell["m"].mean or cell["m"].mean == min(row["criterion"].values)
