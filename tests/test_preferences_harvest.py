"""Preference pairs from evaluations: reviewers' decisive blind verdicts on training examples (an evaluation that
collects preferences) and designers' improved replies. Test examples never become training pairs."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.datasets import preferences as pool
from apps.datasets.models import PreferenceOrigin, PreferencePair
from apps.datasets.preferences import PreferenceError
from apps.evaluations import services
from apps.evaluations.models import Assignment, Comparison, EvaluationPurpose, Generation, Judgment
from apps.evaluations.preferences import harvest_preferences, improve_output
from apps.runs.models import BaseModel
from tests.eval_setup import add_reviewer, fake_outputs, make_rubric, make_version

pytestmark = pytest.mark.django_db


def base_model():
    return BaseModel.objects.get_or_create(
        name="no-weights-needed", defaults={"source_kind": "local", "source": "/nowhere", "context_length": 512}
    )[0]


def evaluation_for(team, purpose=EvaluationPurpose.COLLECT, version=None, **kwargs):
    """Base model against the prompt baseline, outputs stored as generation would store them (no model run)."""
    version = version or make_version(team.project)
    evaluation = services.create_evaluation(
        project=team.project,
        dataset_version=version,
        rubric=make_rubric(team.project),
        base_model=base_model(),
        candidates=[services.CandidateSpec("base"), services.CandidateSpec("prompt", system_prompt="Be kind.")],
        enqueue=False,
        purpose=purpose,
        user=team.pm,
        **kwargs,
    )
    fake_outputs(evaluation)
    return evaluation


def verdict(comparison, reviewer, winner):
    """A reviewer's judgment of one comparison: ``winner`` a candidate, or None for a tie."""
    assignment = Assignment.objects.create(
        comparison=comparison, evaluation=comparison.evaluation, reviewer=reviewer, swapped=False
    )
    return Judgment.objects.create(
        assignment=assignment,
        comparison=comparison,
        evaluation=comparison.evaluation,
        reviewer=reviewer,
        winner=winner,
    )


def output(comparison, candidate):
    return Generation.objects.get(candidate=candidate, item=comparison.item).output


def test_a_collecting_evaluation_uses_the_training_examples(team):
    evaluation = evaluation_for(team, stop_when_settled=True, include_val=True)
    assert evaluation.splits == ["train"] and not evaluation.include_val
    assert not evaluation.stop_when_settled  # every training item is worth a verdict
    items = {c.item.split for c in Comparison.objects.filter(evaluation=evaluation).select_related("item")}
    assert items == {"train"} and Comparison.objects.filter(evaluation=evaluation).count() == 2


def test_decisive_verdicts_become_pairs_and_ties_do_not(team):
    evaluation = evaluation_for(team)
    first, second = Comparison.objects.filter(evaluation=evaluation).select_related("item").order_by("item__position")
    verdict(first, team.reviewer, first.candidate_2)
    verdict(second, team.reviewer, None)
    result = harvest_preferences(evaluation=evaluation, user=team.designer)
    assert (result.created, result.skipped_ties, result.skipped_disagreement, result.skipped_existing) == (1, 1, 0, 0)
    pair = PreferencePair.objects.get(project=team.project)
    assert pair.origin == PreferenceOrigin.VERDICT
    assert pair.messages == first.item.input_messages
    assert pair.preferred == {"role": "assistant", "content": output(first, first.candidate_2)}
    assert pair.non_preferred == {"role": "assistant", "content": output(first, first.candidate_1)}
    assert pair.origin_detail["verdicts"] == 1 and pair.origin_detail["preferred_votes"] == 1
    assert pair.origin_detail["item_position"] == first.item.position


def test_harvesting_again_adds_nothing_twice(team):
    evaluation = evaluation_for(team)
    for comparison in Comparison.objects.filter(evaluation=evaluation):
        verdict(comparison, team.reviewer, comparison.candidate_1)
    assert harvest_preferences(evaluation=evaluation).created == 2
    again = harvest_preferences(evaluation=evaluation)
    assert (again.created, again.skipped_existing) == (0, 2)
    assert PreferencePair.objects.filter(project=team.project).count() == 2


def test_the_agreement_filter_keeps_only_agreeing_verdicts(team):
    evaluation = evaluation_for(team, reviewers_per_pair=3)
    ann, bo = add_reviewer(team, "ann"), add_reviewer(team, "bo")
    split, agreed = Comparison.objects.filter(evaluation=evaluation).order_by("item__position")
    # split: two for candidate 1, one for candidate 2; agreed: two for candidate 2 and a tie
    verdict(split, team.reviewer, split.candidate_1)
    verdict(split, ann, split.candidate_1)
    verdict(split, bo, split.candidate_2)
    verdict(agreed, team.reviewer, agreed.candidate_2)
    verdict(agreed, ann, agreed.candidate_2)
    verdict(agreed, bo, None)

    strict = harvest_preferences(evaluation=evaluation)  # default: every decisive verdict agrees
    assert (strict.created, strict.skipped_disagreement, strict.skipped_ties) == (1, 1, 0)
    kept = PreferencePair.objects.get(project=team.project)
    assert kept.preferred["content"] == output(agreed, agreed.candidate_2)
    assert (kept.origin_detail["preferred_votes"], kept.origin_detail["other_votes"]) == (2, 0)
    assert kept.origin_detail["ties"] == 1 and kept.origin_detail["verdicts"] == 3

    too_many = harvest_preferences(evaluation=evaluation, min_agreement=3)
    assert (too_many.created, too_many.skipped_disagreement, too_many.skipped_existing) == (0, 2, 0)
    majority = harvest_preferences(evaluation=evaluation, min_agreement=2)
    assert (majority.created, majority.skipped_disagreement, majority.skipped_existing) == (1, 0, 1)
    pair = PreferencePair.objects.exclude(pk=kept.pk).get(project=team.project)
    assert pair.preferred["content"] == output(split, split.candidate_1)
    assert (pair.origin_detail["preferred_votes"], pair.origin_detail["other_votes"]) == (2, 1)
    assert pair.origin_detail["min_agreement"] == 2


def test_an_evaluation_on_test_examples_is_never_harvested(team):
    evaluation = evaluation_for(team, purpose=EvaluationPurpose.JUDGE, version=make_version(team.project, 3))
    for comparison in Comparison.objects.filter(evaluation=evaluation):
        verdict(comparison, team.reviewer, comparison.candidate_1)
    with pytest.raises(PreferenceError) as refused:
        harvest_preferences(evaluation=evaluation)
    message = str(refused.value)
    positions = sorted({c.item.position for c in Comparison.objects.filter(evaluation=evaluation)})
    assert f"Examples {', '.join(map(str, positions))} of v1 are test examples" in message
    assert "judge the models trained on these pairs" in message
    assert not PreferencePair.objects.exists()


def test_a_training_item_with_a_test_input_is_refused(team):
    from tests.factories import conversation, make_dataset_version

    version = make_dataset_version(
        team.project,
        {
            "train": [conversation("Where is order #7?", "Hi, today."), conversation("Reset?", "Use the link.")],
            "test": [conversation("where is  ORDER #7?", "Hi, it ships today.")],
        },
    )
    evaluation = evaluation_for(team, version=version)
    for comparison in Comparison.objects.filter(evaluation=evaluation):
        verdict(comparison, team.reviewer, comparison.candidate_1)
    with pytest.raises(PreferenceError, match="Example 0 of v1 has the same input as a test example"):
        harvest_preferences(evaluation=evaluation)
    assert not PreferencePair.objects.exists()


def test_harvested_pairs_freeze_on_the_version_they_came_from(team):
    evaluation = evaluation_for(team)
    for comparison in Comparison.objects.filter(evaluation=evaluation):
        verdict(comparison, team.reviewer, comparison.candidate_2)
    harvest_preferences(evaluation=evaluation)
    version = pool.freeze_preference_version(project=team.project, dataset_version=evaluation.dataset_version)
    assert version.pair_count == 2


# --- a designer's improved reply ------------------------------------------------------------------------
def test_an_improved_reply_becomes_the_preferred_side(team):
    evaluation = evaluation_for(team)
    generation = Generation.objects.filter(candidate__evaluation=evaluation).select_related("item").first()
    pair = improve_output(generation=generation, text="Hi Ann,\nIt ships today.\nWarm regards", user=team.designer)
    assert pair.origin == PreferenceOrigin.EDIT
    assert pair.messages == generation.item.input_messages
    assert pair.preferred == {"role": "assistant", "content": "Hi Ann,\nIt ships today.\nWarm regards"}
    assert pair.non_preferred == {"role": "assistant", "content": generation.output}
    assert pair.origin_detail["generation"] == generation.pk
    # the same improvement again is the same pair
    again = improve_output(generation=generation, text="Hi Ann,\nIt ships today.\nWarm regards", user=team.designer)
    assert again.pk == pair.pk and PreferencePair.objects.count() == 1


def test_an_unchanged_or_empty_reply_is_refused(team):
    evaluation = evaluation_for(team)
    generation = Generation.objects.filter(candidate__evaluation=evaluation).first()
    with pytest.raises(PreferenceError, match="unchanged"):
        improve_output(generation=generation, text=f"  {generation.output}\n", user=team.designer)
    with pytest.raises(PreferenceError, match="empty"):
        improve_output(generation=generation, text="   ", user=team.designer)
    assert not PreferencePair.objects.exists()


def test_a_reply_to_a_test_example_is_not_improved_and_the_page_says_why(team):
    evaluation = evaluation_for(team, purpose=EvaluationPurpose.JUDGE)
    generation = Generation.objects.filter(candidate__evaluation=evaluation).select_related("item").first()
    with pytest.raises(PreferenceError, match="is a test example of v1: test examples judge the models"):
        improve_output(generation=generation, text="A better reply.", user=team.designer)
    client = team.client("designer")
    url = reverse("evaluation_improve", args=[team.project.slug, evaluation.pk, generation.pk])
    response = client.post(url, {"text": "A better reply."}, follow=True)
    assert "is a test example of v1" in response.content.decode()
    assert not PreferencePair.objects.exists()
    page = client.get(reverse("evaluation_results", args=[team.project.slug, evaluation.pk])).content.decode()
    assert "Improve this reply" not in page and "Replies to test examples cannot be improved" in page


def test_designer_improves_a_reply_from_the_results_page(team):
    evaluation = evaluation_for(team)
    client = team.client("designer")
    page = client.get(reverse("evaluation_results", args=[team.project.slug, evaluation.pk])).content.decode()
    assert "Improve this reply" in page and "the figures below do not judge them" in page
    generation = Generation.objects.filter(candidate__evaluation=evaluation).first()
    url = reverse("evaluation_improve", args=[team.project.slug, evaluation.pk, generation.pk])
    response = client.post(url, {"text": "Hi Ann, a far better reply."}, follow=True)
    assert "Saved as pair #" in response.content.decode()
    assert PreferencePair.objects.get().preferred["content"] == "Hi Ann, a far better reply."


def test_a_reviewer_cannot_improve_replies_or_harvest(team):
    evaluation = evaluation_for(team)
    generation = Generation.objects.filter(candidate__evaluation=evaluation).first()
    client = team.client("reviewer")
    url = reverse("evaluation_improve", args=[team.project.slug, evaluation.pk, generation.pk])
    assert client.post(url, {"text": "Mine."}).status_code == 403
    assert client.post(reverse("evaluation_harvest", args=[team.project.slug, evaluation.pk])).status_code == 403
    assert not PreferencePair.objects.exists()


def test_the_collect_form_and_the_harvest_button(team):
    version = make_version(team.project)
    rubric = make_rubric(team.project)
    base = base_model()
    client = team.client("pm")
    form = client.get(reverse("evaluation_create", args=[team.project.slug])).content.decode()
    assert "Collect preferences to train on (uses training examples)" in form
    response = client.post(
        reverse("evaluation_create", args=[team.project.slug]),
        {
            "purpose": "collect",
            "dataset_version": version.pk,
            "rubric": rubric.pk,
            "base_model": base.pk,
            "include_base": "on",
            "include_prompt": "on",
            "few_shot": 0,
            "max_new_tokens": 8,
            "seed": 0,
            "reviewers_per_pair": 1,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    evaluation = type(version.evaluations.first()).objects.get(dataset_version=version)
    assert evaluation.purpose == EvaluationPurpose.COLLECT and evaluation.splits == ["train"]
    fake_outputs(evaluation)
    first = Comparison.objects.filter(evaluation=evaluation).first()
    verdict(first, team.reviewer, first.candidate_1)
    designer = team.client("designer")
    detail = designer.get(evaluation.get_absolute_url()).content.decode()
    assert "Add the verdicts to the preference pairs" in detail
    response = designer.post(reverse("evaluation_harvest", args=[team.project.slug, evaluation.pk]), follow=True)
    assert "Added 1 preference pair to the Preferences page" in response.content.decode()
    assert PreferencePair.objects.filter(project=team.project, origin=PreferenceOrigin.VERDICT).count() == 1


def test_a_collecting_evaluation_does_not_count_as_evaluating_its_runs(team, tmp_path):
    from apps.freshness.services import runs_to_reevaluate
    from tests.eval_setup import make_run

    trained_on = make_version(team.project)
    run = make_run(team.project, trained_on, base_model(), tmp_path / "adapter")
    newer = make_version(team.project)
    services.create_evaluation(
        project=team.project,
        dataset_version=newer,
        rubric=make_rubric(team.project),
        base_model=base_model(),
        candidates=[services.CandidateSpec("base"), services.CandidateSpec("run", run_id=run.pk)],
        enqueue=False,
        purpose=EvaluationPurpose.COLLECT,
    )
    assert list(runs_to_reevaluate(team.project, newer)) == [run]


def test_a_member_still_judging_blind_does_not_see_pairs_of_model_outputs(team):
    evaluation = evaluation_for(team)  # two reviewers per pair: the team's reviewer has pairs left
    ann = add_reviewer(team, "ann")
    first = Comparison.objects.filter(evaluation=evaluation).first()
    verdict(first, ann, first.candidate_2)
    harvest_preferences(evaluation=evaluation)
    preferred = PreferencePair.objects.get().preferred["content"]
    client = team.client("reviewer")
    page = client.get(reverse("preference_list", args=[team.project.slug])).content.decode()
    assert "You still have blind reviews to do" in page and preferred not in page
    assert client.get(reverse("preference_export", args=[team.project.slug])).status_code == 403
    # the designer never judges: they see the pair, and the pool's fragment swaps in place
    designer = team.client("designer")
    fragment = designer.get(
        reverse("preference_list", args=[team.project.slug]) + "?show=verdict&fragment=pool", HTTP_HX_REQUEST="true"
    ).content.decode()
    assert fragment.lstrip().startswith('<section class="card" id="pool">') and preferred in fragment


def test_an_empty_output_is_skipped_and_the_other_verdicts_still_harvested(team):
    evaluation = evaluation_for(team)
    first, second = Comparison.objects.filter(evaluation=evaluation).order_by("item__position")
    Generation.objects.filter(candidate=first.candidate_1, item=first.item).update(output="   ")
    verdict(first, team.reviewer, first.candidate_1)
    verdict(second, team.reviewer, second.candidate_1)
    result = harvest_preferences(evaluation=evaluation)
    assert (result.created, result.skipped_invalid) == (1, 1)
    assert PreferencePair.objects.get().origin_detail["comparison"] == second.pk
