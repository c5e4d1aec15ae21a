"""Re-evaluation when data changes: the "not evaluated on current data" marker appears and disappears, one
action re-evaluates runs and their baselines on a newer version, and two evaluations compare example by example."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.evaluations import automatic as eval_services_automatic
from apps.evaluations import generation as eval_services_generation
from apps.evaluations import selectors as eval_selectors
from apps.evaluations import services as eval_services
from apps.evaluations.models import Assignment, Comparison, Evaluation, Generation, Judgment
from apps.freshness import selectors, services
from apps.runs.models import BaseModel
from tests.eval_setup import make_rubric, make_run
from tests.factories import conversation, make_dataset_version

pytestmark = pytest.mark.django_db
STALE = '<span class="badge warn stale"'  # the marker: "not evaluated on current data", with its reason


def model():
    return BaseModel.objects.get_or_create(
        name="m", defaults={"display_name": "M", "source_kind": "local", "source": "/x"}
    )[0]


def questions(n, start=0):
    return [
        conversation(f"Where is order #{i}?", f"Hi,\nOrder #{i} ships today.\nWarm regards")
        for i in range(start, start + n)
    ]


def version(project, test, train=None):
    return make_dataset_version(project, {"train": train or questions(2, 100), "val": questions(1, 200), "test": test})


def evaluate(project, dv, rubric, run, **kwargs):
    return eval_services.create_evaluation(
        project=project,
        dataset_version=dv,
        rubric=rubric,
        base_model=model(),
        enqueue=False,
        candidates=[
            eval_services.CandidateSpec("base"),
            eval_services.CandidateSpec("prompt", system_prompt="Be kind.", few_shot=1),
            eval_services.CandidateSpec("run", run_id=run.pk),
        ],
        **kwargs,
    )


def stale_marks(client, path):
    html = client.get(path).content.decode()
    assert html.count(STALE) == html.count("not evaluated on current data</span>")
    return html.count(STALE)


def test_the_stale_marker_appears_when_data_moves_on_and_disappears_once_re_evaluated(team, tmp_path):
    project, pm = team.project, team.client("pm")
    v1, rubric = version(project, questions(3)), make_rubric(project)
    run = make_run(project, v1, model(), tmp_path / "adapter")
    old = evaluate(project, v1, rubric, run)
    assert stale_marks(pm, "/p/support/runs/") == 0 and stale_marks(pm, "/p/support/evals/") == 0

    v2 = version(project, questions(4))  # a newer version is frozen
    assert selectors.stale_runs(project) == {run.pk: "trained on v1; not evaluated on v2"}
    assert selectors.stale_evaluations(project) == {old.pk: "made on v1; v2 is newer"}
    assert stale_marks(pm, "/p/support/runs/") == 1 and stale_marks(pm, "/p/support/evals/") == 1
    assert stale_marks(team.client("reviewer"), "/p/support/freshness/") == 2

    new = services.reevaluate(project=project, dataset_version=v2, user=team.pm, enqueue=False)  # default: stale runs
    assert new.dataset_version == v2 and new.rubric == rubric and new.name == "Re-evaluation on v2"
    assert [(c.kind, c.run_id, c.system_prompt, c.few_shot) for c in new.candidates.order_by("position")] == [
        ("base", None, "", 0),
        ("prompt", None, "Be kind.", 1),
        ("run", run.pk, "", 0),
    ]  # same candidates
    assert selectors.stale_runs(project) == {}
    assert stale_marks(pm, "/p/support/runs/") == 0
    assert stale_marks(pm, "/p/support/evals/") == 1  # the old evaluation stays on old data; the new one is current

    rubric_v2 = eval_services.revise_rubric(
        rubric=rubric, description="stricter", criteria=eval_services.criteria_specs(rubric)
    )
    assert selectors.stale_evaluations(project)[new.pk] == "rubric House style v1; v2 is newer"
    assert run.pk in selectors.stale_runs(project)
    again = services.reevaluate(project=project, dataset_version=v2, run_ids=[run.pk], enqueue=False)
    assert again.rubric == rubric_v2 and selectors.stale_runs(project) == {}


def test_re_evaluating_on_a_version_without_a_test_split_says_so_and_launches_nothing(team, tmp_path):
    project = team.project
    v1 = version(project, questions(2))
    run = make_run(project, v1, model(), tmp_path / "adapter")
    evaluate(project, v1, make_rubric(project), run)
    no_test = make_dataset_version(project, {"train": questions(2), "val": questions(1, 50)})
    before = Evaluation.objects.count()
    with pytest.raises(services.ReevaluateError, match="v2 has no test split"):
        services.reevaluate(project=project, dataset_version=no_test, run_ids=[run.pk], enqueue=False)
    with pytest.raises(CommandError, match="v2 has no test split"):
        call_command("reevaluate", "--project", "support", "--dataset-version", "2", "--runs", str(run.pk))
    with pytest.raises(CommandError, match="run ids separated by commas"):
        call_command("reevaluate", "--project", "support", "--dataset-version", "1", "--runs", "three")
    page = team.client("pm").post(
        "/p/support/freshness/", {"dataset_version": no_test.pk, "runs": [run.pk]}, follow=True
    )
    assert "v2 has no test split" in page.content.decode()
    assert Evaluation.objects.count() == before


def test_the_reevaluate_command_names_the_new_evaluation_and_its_candidates(team, tmp_path, capsys):
    project = team.project
    v1 = version(project, questions(2))
    run = make_run(project, v1, model(), tmp_path / "adapter")
    evaluate(project, v1, make_rubric(project), run)
    version(project, questions(3))
    call_command("reevaluate", "--project", "support", "--dataset-version", "2")
    new = Evaluation.objects.order_by("-pk").first()
    out = capsys.readouterr().out
    assert f"Evaluation #{new.pk} (Re-evaluation on v2) on v2:" in out and f"Tuned run #{run.pk}" in out
    assert new.total == 3 * 3


def fill(evaluation, run, similarities, run_wins):
    """Outputs with known similarity for the run (0.5 for the others) and one judgment per item of the run
    against the base model, won or lost as given."""
    items = list(eval_selectors.eval_items(evaluation))
    for c in evaluation.candidates.all():
        sims = similarities if c.run_id == run.pk else [0.5] * len(items)
        Generation.objects.bulk_create(
            [
                Generation(candidate=c, item=item, output=f"out {c.kind} {item.position} <b>x</b>", similarity=s)
                for item, s in zip(items, sims, strict=True)
            ]
        )
    eval_services_generation.build_comparisons(evaluation)
    base, tuned = evaluation.candidates.get(kind="base"), evaluation.candidates.get(kind="run")
    for item, won in zip(items, run_wins, strict=True):
        comparison = Comparison.objects.get(evaluation=evaluation, item=item, candidate_1=base, candidate_2=tuned)
        assignment = Assignment.objects.create(
            comparison=comparison, evaluation=evaluation, reviewer=evaluation.created_by, swapped=False
        )
        Judgment.objects.create(
            assignment=assignment,
            comparison=comparison,
            evaluation=evaluation,
            reviewer=evaluation.created_by,
            winner=tuned if won else base,
        )


def test_two_evaluations_compare_example_by_example_with_the_change_in_win_rate_and_its_interval(team, tmp_path):
    project = team.project
    shared = questions(4)
    v1 = version(project, shared + questions(1, 50))  # one example only in v1
    v2 = version(project, questions(2, 60) + shared)  # the shared ones at other positions, two new ones
    rubric = make_rubric(project)
    run = make_run(project, v1, model(), tmp_path / "adapter")
    a, b = (
        evaluate(project, v1, rubric, run, user=team.designer),
        evaluate(project, v2, rubric, run, user=team.designer),
    )
    fill(a, run, [0.9, 0.5, 0.5, 0.2, 0.3], [1, 1, 0, 0, 1])
    fill(b, run, [0.1, 0.2, 0.9, 0.8, 0.1, 0.21], [0, 0, 1, 1, 1, 0])
    # shared items: #0 0.9 -> 0.9 stayed, #1 0.5 -> 0.8 improved, #2 0.5 -> 0.1 regressed, #3 0.2 -> 0.21 stayed

    diff = selectors.compare_evaluations(a, b)
    assert diff.candidate_key == f"run:{run.pk}" and diff.measure == "similarity"
    assert diff.counts == {"improved": 1, "regressed": 1, "stayed": 2} and (diff.only_a, diff.only_b) == (1, 2)
    assert [(r.input_text, r.outcome) for r in diff.rows] == [  # worst regression first
        ("Where is order #2?", "regressed"),
        ("Where is order #0?", "stayed"),
        ("Where is order #3?", "stayed"),
        ("Where is order #1?", "improved"),
    ]
    # wins on the shared items: before 1,1,0,0 (0.5); after 1,1,1,0 (0.75). Paired differences 0,0,1,0: a bootstrap
    # mean is k/4 with k ~ Binomial(4, 1/4), P(k=0) = 0.32 > 2.5% and P(k<=2) = 0.95 < 97.5% <= P(k<=3): 0 to 0.75.
    assert (diff.win.a, diff.win.b, diff.win.n) == (0.5, 0.75, 4)
    assert diff.win.change == pytest.approx(0.25) and (diff.win.low, diff.win.high) == (0.0, 0.75)
    assert [r.position for r in selectors.compare_evaluations(a, b, sort="improvement").rows][
        0
    ] == 6  # #1 in v2: after 2 train, 1 val, 2 new

    page = team.client("designer").get(f"/p/support/freshness/compare/?a={a.pk}&b={b.pk}").content.decode()
    assert 'id="count-regressed">1<' in page and "a change of <strong>0.25</strong>" in page
    assert "95% interval 0.00 to 0.75" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # model output is escaped


def test_comparing_evaluations_with_no_examples_in_common_says_so(team, tmp_path):
    project = team.project
    v1, v2 = version(project, questions(2)), version(project, questions(2, 10))
    rubric = make_rubric(project)
    run = make_run(project, v1, model(), tmp_path / "adapter")
    a, b = evaluate(project, v1, rubric, run), evaluate(project, v2, rubric, run)
    with pytest.raises(selectors.CompareError, match="have no examples in common"):
        selectors.compare_evaluations(a, b)
    page = team.client("designer").get(f"/p/support/freshness/compare/?a={a.pk}&b={b.pk}").content.decode()
    assert "have no examples in common: nothing to compare example by example." in page
    same = team.client("designer").get(f"/p/support/freshness/compare/?a={a.pk}&b={a.pk}").content.decode()
    assert "Pick two different evaluations to compare." in same


def test_a_member_reviewing_blind_does_not_see_the_comparison(team, tmp_path):
    project = team.project
    v1, v2 = version(project, questions(2)), version(project, questions(2))
    rubric = make_rubric(project)
    run = make_run(project, v1, model(), tmp_path / "adapter")
    a, b = evaluate(project, v1, rubric, run, user=team.pm), evaluate(project, v2, rubric, run, user=team.pm)
    fill(a, run, [0.5, 0.5], [1, 0])
    fill(b, run, [0.5, 0.5], [1, 0])
    page = team.client("reviewer").get(f"/p/support/freshness/compare/?a={a.pk}&b={b.pk}").content.decode()
    assert "is hidden from you while blind review goes on" in page and "out run" not in page


def test_the_pm_overview_asks_for_a_prompt_first_and_for_re_evaluation_once_data_moved_on(team, tmp_path):
    project, pm = team.project, team.client("pm")
    v1 = version(project, questions(2))
    overview = pm.get("/p/support/").content.decode()
    assert "No prompt has been tried yet: run one on v1&#x27;s validation split first" in overview
    run = make_run(project, v1, model(), tmp_path / "adapter")
    evaluate(project, v1, make_rubric(project), run)
    version(project, questions(3))
    overview = pm.get("/p/support/").content.decode()
    assert "1 finished run not evaluated on current data (v2): re-evaluate them on it." in overview
    assert 'href="/p/support/freshness/"' in overview


@pytest.mark.django_db(transaction=True)  # the task is queued on commit: a test transaction would never commit
def test_reevaluate_wait_generates_the_same_candidates_on_the_new_version_and_compares_them(
    team, settings, tiny_model_dir, tmp_path, eager, capsys
):
    from tests.eval_setup import make_evaluation

    old, run = make_evaluation(team, settings, tiny_model_dir, tmp_path, test_count=2)  # generated on v1
    v1 = old.dataset_version
    version(team.project, [item.messages for item in eval_selectors.eval_items(old)] + questions(1, 70))
    call_command("reevaluate", "--project", "support", "--dataset-version", "2", "--wait", "--timeout", "300")
    new = Evaluation.objects.get(dataset_version__number=2)
    assert "Ready for review: 9 outputs." in capsys.readouterr().out  # 3 candidates x 3 test examples
    assert new.max_new_tokens == old.max_new_tokens == 6 and v1.number == 1
    diff = selectors.compare_evaluations(old, new)
    assert diff.candidate_key == f"run:{run.pk}" and len(diff.rows) == 2 and diff.only_b == 1
    # greedy and seeded: the same run on the same inputs writes the same replies, so nothing moved
    assert diff.counts == {"improved": 0, "regressed": 0, "stayed": 2}
    assert all(r.output_a == r.output_b for r in diff.rows) and diff.win is None


def test_where_both_evaluations_ran_the_automatic_checks_they_decide_what_improved_or_regressed(team, tmp_path):
    from tests.test_prompts import checked_rubric

    project = team.project
    shared = questions(3)
    v1, v2 = version(project, shared), version(project, shared)
    rubric = checked_rubric(project)  # three checks: starts "Hi ", ends "Warm regards", contains "Friday"
    run = make_run(project, v1, model(), tmp_path / "adapter")
    a, b = evaluate(project, v1, rubric, run, user=team.pm), evaluate(project, v2, rubric, run, user=team.pm)
    fill(a, run, [0.5, 0.5, 0.5], [1, 0, 1])
    fill(b, run, [0.5, 0.5, 0.5], [1, 0, 1])  # the same similarity everywhere: only the checks can tell
    replies = {
        a: ["Hi A, Friday. Warm regards", "Hi B. Warm regards", "nothing"],
        b: ["Hi A, Monday. Warm regards", "Hi B. Warm regards", "Hi C, Friday. Warm regards"],
    }
    for evaluation, texts in replies.items():
        for item, text in zip(eval_selectors.eval_items(evaluation), texts, strict=True):
            Generation.objects.filter(candidate__evaluation=evaluation, candidate__kind="run", item=item).update(
                output=text
            )
        eval_services_automatic.run_checks(evaluation.pk)
    diff = selectors.compare_evaluations(a, b, sort="position")
    assert diff.measure == "checks"
    assert [(r.score_a, r.score_b, r.outcome) for r in diff.rows] == [
        (1.0, pytest.approx(2 / 3), "regressed"),
        (pytest.approx(2 / 3), pytest.approx(2 / 3), "stayed"),
        (0.0, 1.0, "improved"),
    ]
    assert diff.win.change == 0 and (diff.win.low, diff.win.high) == (0.0, 0.0)  # every example judged alike twice


def test_an_experiments_subset_version_is_never_the_current_data_and_counts_as_its_source(team, tmp_path):
    """An experiment freezes subsets of v1 as v3, v4 …: they are parts of v1, not newer data than v2."""
    from apps.datasets.versions import freeze_subset

    project = team.project
    v1 = version(project, questions(3), train=questions(8, 100))
    v2 = version(project, questions(3, 10), train=questions(8, 200))
    subset_of_v1 = freeze_subset(source=v1, train_positions=[0, 1, 2], note="experiment point")
    subset_of_v2 = freeze_subset(source=v2, train_positions=[0, 1, 2], note="experiment point")
    assert subset_of_v1.number > v2.number
    assert selectors.current_data(project).dataset_version == v2
    on_v1_subset, on_v2_subset = (
        make_run(project, v, model(), tmp_path / f"a{v.number}") for v in (subset_of_v1, subset_of_v2)
    )
    assert selectors.stale_runs(project) == {
        on_v1_subset.pk: f"trained on v{subset_of_v1.number} (part of v1); not evaluated on v2"
    }
    rubric = make_rubric(project)
    on_subset = evaluate(project, subset_of_v1, rubric, on_v1_subset)
    assert selectors.stale_evaluations(project) == {
        on_subset.pk: f"made on v{subset_of_v1.number} (part of v1); v2 is newer"
    }


def test_the_re_evaluation_form_offers_and_accepts_only_versions_a_person_froze(team, tmp_path):
    from apps.datasets.versions import freeze_subset

    project = team.project
    v1 = version(project, questions(3), train=questions(8, 100))
    subset = freeze_subset(source=v1, train_positions=[0, 1, 2], note="experiment point")
    run = make_run(project, v1, model(), tmp_path / "a")
    client = team.client("pm")
    page = client.get(f"/p/{project.slug}/freshness/").content.decode()
    assert f'<option value="{v1.pk}">' in page and f'<option value="{subset.pk}">' not in page
    response = client.post(
        f"/p/{project.slug}/freshness/", {"dataset_version": subset.pk, "runs": [run.pk]}, follow=True
    )
    assert "Pick the dataset version to re-evaluate on." in response.content.decode()
    assert not Evaluation.objects.filter(dataset_version=subset).exists()
