"""Blind for everyone who judges: nobody judges pairs after seeing which candidate wrote what, nobody sees
that before finishing their own pairs (whatever their role), and reviewers get no adapters, logs or system
prompts while they review. Sides are balanced per candidate pair and unpredictable from the last pair."""

import random

import numpy as np
import pytest
from django.test import Client

from apps.accounts.models import Role
from apps.evaluations import review, selectors, services
from apps.evaluations.models import Assignment, Unblinding
from tests.eval_setup import add_reviewer, fake_outputs, make_evaluation
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready(team, settings, tiny_model_dir, tmp_path_factory):
    return make_evaluation(team, settings, tiny_model_dir, tmp_path_factory.mktemp("adapter"), fake=True)


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def judge_all(evaluation, user, winner="tie") -> int:
    n = 0
    while (a := review.next_assignment(evaluation=evaluation, reviewer=user)) is not None:
        review.submit_judgment(
            assignment=a,
            reviewer=user,
            winner=winner,
            scores={(s, c.pk): 1 for s in "AB" for c in evaluation.rubric.criteria.all()},
        )
        n += 1
    return n


def test_the_pm_who_launched_an_evaluation_is_never_handed_its_pairs(team, ready):
    evaluation, _ = ready
    assert Unblinding.objects.filter(evaluation=evaluation, user=team.pm, reason="launched").exists()
    assert review.next_assignment(evaluation=evaluation, reviewer=team.pm) is None
    assert selectors.remaining_for(evaluation, team.pm) == 0
    client = team.client("pm")
    response = client.post(f"/p/support/evals/review/{evaluation.pk}/next/")
    assert response.status_code == 302 and response["Location"] == "/p/support/evals/review/"
    queue = client.get("/p/support/evals/review/").content.decode()
    assert "You have seen which model wrote what, so you do not review it." in queue


def test_a_pm_who_started_judging_sees_no_results_candidates_or_export_until_done(team, ready):
    evaluation, _ = ready
    pm2 = MembershipFactory(project=team.project, role=Role.PM, user=UserFactory(username="pm2")).user
    client = client_for(pm2)
    client.post(f"/p/support/evals/review/{evaluation.pk}/next/")  # takes a first pair
    results = client.get(f"/p/support/evals/{evaluation.pk}/results/")
    assert results.status_code == 403 and "You are reviewing this evaluation blind" in results.content.decode()
    detail = client.get(f"/p/support/evals/{evaluation.pk}/").content.decode()
    assert "Be kind." not in detail and "Prompt-only" not in detail and "zebra-run" not in detail
    assert client.get(f"/p/support/evals/{evaluation.pk}/judgments.csv").status_code == 403
    assert client.get("/p/support/evals/").content.decode().count("hidden while you review") == 1
    assert client.post(f"/p/support/evals/{evaluation.pk}/reveal/").status_code == 302  # refused, with a message
    assert not Unblinding.objects.filter(user=pm2).exists()
    judge_all(evaluation, pm2)
    assert client.get(f"/p/support/evals/{evaluation.pk}/results/").status_code == 200
    assert "Be kind." in client.get(f"/p/support/evals/{evaluation.pk}/").content.decode()


def test_staff_who_judge_follow_the_same_rule(team, ready):
    evaluation, _ = ready
    admin = UserFactory(username="root", is_staff=True)
    client = client_for(admin)
    client.post(f"/p/support/evals/review/{evaluation.pk}/next/")
    assert Assignment.objects.filter(reviewer=admin).count() == 1
    assert client.get(f"/p/support/evals/{evaluation.pk}/results/").status_code == 403


def test_a_pm_who_reveals_the_results_is_taken_off_the_review(team, ready):
    evaluation, _ = ready
    pm2 = MembershipFactory(project=team.project, role=Role.PM, user=UserFactory(username="pm2")).user
    client = client_for(pm2)
    hidden = client.get(f"/p/support/evals/{evaluation.pk}/results/")
    assert hidden.status_code == 403 and "stop reviewing this evaluation" in hidden.content.decode()
    assert selectors.remaining_for(evaluation, pm2) == 9
    response = client.post(f"/p/support/evals/{evaluation.pk}/reveal/")
    assert response.status_code == 302 and response["Location"].endswith(f"/evals/{evaluation.pk}/results/")
    assert client.get(response["Location"]).status_code == 200
    assert review.next_assignment(evaluation=evaluation, reviewer=pm2) is None
    assert selectors.remaining_for(evaluation, pm2) == 0


def test_a_reviewer_gets_no_adapter_log_or_system_prompt_while_reviewing(team, ready):
    evaluation, run = ready
    client = team.client("reviewer")
    run_page = client.get(f"/p/support/runs/{run.pk}/").content.decode()
    assert "Download adapter" not in run_page and 'id="run-log"' not in run_page and "run-log-hidden" in run_page
    assert client.get(f"/p/support/runs/{run.pk}/adapter.zip").status_code == 403
    detail = client.get(f"/p/support/evals/{evaluation.pk}/").content.decode()
    assert "Be kind." not in detail and "candidates-hidden" in detail
    assert str(run.adapter_path) not in detail and str(run.adapter_path) not in run_page
    # the PM sees them, and a designer (who never judges) too
    assert "Download adapter" in team.client("pm").get(f"/p/support/runs/{run.pk}/").content.decode()
    assert "Be kind." in team.client("designer").get(f"/p/support/evals/{evaluation.pk}/").content.decode()
    assert judge_all(evaluation, team.reviewer) == 9
    assert client.get(f"/p/support/runs/{run.pk}/adapter.zip").status_code != 403  # done: no longer blind


def test_a_finished_reviewer_sees_aggregates_and_examples_only_if_the_pm_allows(team, ready):
    evaluation, _ = ready
    judge_all(evaluation, team.reviewer, winner="A")
    client = team.client("reviewer")
    page = client.get(f"/p/support/evals/{evaluation.pk}/results/").content.decode()
    assert "Head to head" in page and 'id="examples-hidden"' in page and " from candidate " not in page
    assert client.get(f"/p/support/evals/{evaluation.pk}/judgments.csv").status_code == 403
    assert Unblinding.objects.filter(evaluation=evaluation, user=team.reviewer, reason="finished").exists()
    evaluation.reviewers_see_examples = True
    evaluation.save()
    page = client.get(f"/p/support/evals/{evaluation.pk}/results/").content.decode()
    assert " from candidate " in page
    assert client.get(f"/p/support/evals/{evaluation.pk}/judgments.csv").status_code == 200


def test_handing_out_a_pair_is_a_post_so_a_link_preview_cannot_claim_one(team, ready):
    evaluation, _ = ready
    assert team.client("reviewer").get(f"/p/support/evals/review/{evaluation.pk}/next/").status_code == 405
    assert not Assignment.objects.exists()


def test_sides_are_balanced_per_candidate_pair_and_the_last_pair_gives_nothing_away(
    team, settings, tiny_model_dir, tmp_path, monkeypatch
):
    """Over 360 assignments (3 reviewers x 40 items x 3 candidate pairs): each reviewer sees each candidate
    of a pair on side A within the imbalance limit of as often as on B, and whether the last pair was swapped
    does not predict the next (the old permuted blocks of two made every second pair the opposite of the first)."""
    monkeypatch.setattr(review, "side_rng", random.Random(11))
    evaluation, _ = make_evaluation(
        team, settings, tiny_model_dir, tmp_path, fake=True, test_count=40, reviewers_per_pair=3
    )
    reviewers = [team.reviewer, add_reviewer(team, "r2"), add_reviewer(team, "r3")]
    for user in reviewers:
        assert judge_all(evaluation, user) == 120
    follows, same_candidate_same_side = [], []
    for user in reviewers:
        rows = list(
            Assignment.objects.filter(reviewer=user)
            .order_by("created_at", "id")
            .values_list("comparison__candidate_1_id", "comparison__candidate_2_id", "swapped")
        )
        balance = {}
        for c1, c2, swapped in rows:
            balance[(c1, c2)] = balance.get((c1, c2), 0) + (-1 if swapped else 1)
        assert len(balance) == 3 and all(abs(v) <= review.SIDE_IMBALANCE_LIMIT for v in balance.values())
        swaps = np.array([s for _, _, s in rows], dtype=float)
        follows += list(zip(swaps[:-1], swaps[1:], strict=True))
        for (a1, a2, s1), (b1, b2, s2) in zip(rows, rows[1:], strict=False):
            shown_a = {a2 if s1 else a1: "A", a1 if s1 else a2: "B"}
            shown_b = {b2 if s2 else b1: "A", b1 if s2 else b2: "B"}
            same_candidate_same_side += [shown_a[c] == shown_b[c] for c in set(shown_a) & set(shown_b)]
    previous, nxt = np.array(follows).T
    assert abs(np.corrcoef(previous, nxt)[0, 1]) < 0.12  # 357 consecutive pairs: 2.3 standard errors
    # a candidate seen on one side stays there next time about half of the time, not never or always
    assert 0.4 < np.mean(same_candidate_same_side) < 0.6


def test_blind_work_in_one_evaluation_hides_examples_and_prompts_of_the_others(team, ready):
    """A reviewer done with one evaluation but not with another must not study labelled outputs or the
    system prompt of the first: the same candidates may be in the second."""
    first, _ = ready
    first.reviewers_see_examples = True
    first.save()
    judge_all(first, team.reviewer)
    second = services.create_evaluation(
        project=team.project,
        dataset_version=first.dataset_version,
        rubric=first.rubric,
        base_model=first.base_model,
        candidates=[services.CandidateSpec("base"), services.CandidateSpec("prompt", system_prompt="Be kind.")],
        enqueue=False,
        user=team.pm,
    )
    fake_outputs(second)
    client = team.client("reviewer")
    page = client.get(f"/p/support/evals/{first.pk}/results/").content.decode()
    assert "Head to head" in page and " from candidate " not in page
    assert "Be kind." not in client.get(f"/p/support/evals/{first.pk}/").content.decode()
    assert client.get(f"/p/support/evals/{first.pk}/judgments.csv").status_code == 403
    judge_all(second, team.reviewer)
    assert " from candidate " in client.get(f"/p/support/evals/{first.pk}/results/").content.decode()
    assert "Be kind." in client.get(f"/p/support/evals/{first.pk}/").content.decode()


def test_a_side_is_forced_only_at_the_imbalance_limit_not_after_every_pair(team, ready, monkeypatch):
    """A coin that always says "swap": each of the reviewer's three pairs of the same two candidates comes
    swapped, since three is under the limit. Balance within one forced every second side back (half of the
    sides known in advance)."""

    class AlwaysSwap:
        def random(self):
            return 0.0

    monkeypatch.setattr(review, "side_rng", AlwaysSwap())
    evaluation, _ = ready
    assert judge_all(evaluation, team.reviewer) == 9
    sides = Assignment.objects.filter(reviewer=team.reviewer).values_list("swapped", flat=True)
    assert list(sides) == [True] * 9
