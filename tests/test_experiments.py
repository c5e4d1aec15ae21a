"""Data experiments: nested seeded subsets, the trend and its interval against a hand computation, bad input,
and an experiment advancing from its runs' outcomes (fake finished runs and outputs: no model needed)."""

from __future__ import annotations

import math

import pytest
from django.core.management import CommandError, call_command

from apps.datasets.models import DatasetVersion
from apps.evaluations.models import CheckResult
from apps.experiments import selectors, services, statistics
from apps.experiments.models import Experiment, ExperimentStatus, Point
from apps.runs.launching import cancel_run
from apps.runs.models import Run, RunStatus
from tests.experiments_setup import experiment_setup, fake_scores, finish_runs
from tests.factories import conversation, make_dataset_version


# --- the numbers --------------------------------------------------------------------------------------
def test_subsets_are_nested_prefixes_of_one_seeded_permutation():
    examples = [(100 + i, f"hash-{i}") for i in range(80)]
    positions = [p for p, _ in examples]
    subsets = statistics.nested_subsets(examples, [0.125, 0.25, 0.5, 1.0], seed=7)
    assert [len(subsets[f]) for f in (0.125, 0.25, 0.5, 1.0)] == [10, 20, 40, 80]
    assert set(subsets[0.125]) < set(subsets[0.25]) < set(subsets[0.5]) < set(subsets[1.0]) == set(positions)
    assert subsets == statistics.nested_subsets(examples, [0.125, 0.25, 0.5, 1.0], seed=7)  # seeded: the same again
    other = statistics.nested_subsets(examples, [0.125, 0.25, 0.5, 1.0], seed=8)
    assert other[0.125] != subsets[0.125]  # another seed draws other examples
    assert subsets[0.25] != positions[:20]  # a draw, not the first rows of the split


def test_two_versions_draw_the_examples_they_share_in_the_same_order():
    curated = [(i, f"clean-{i}") for i in range(40)]
    raw = (
        [(i, f"clean-{i}") for i in range(20)]
        + [(20, "flawed-a"), (21, "flawed-b")]
        + [(i + 2, f"clean-{i}") for i in range(20, 40)]
    )  # the same examples, two flawed ones in between
    fractions = [0.25, 0.5, 1.0]
    for fraction in fractions:
        small = {h for p, h in curated if p in statistics.nested_subsets(curated, fractions, 3)[fraction]}
        big = {dict((p, h) for p, h in raw)[p] for p in statistics.nested_subsets(raw, fractions, 3)[fraction]}
        clean_in_raw = {h for h in big if h.startswith("clean")}
        assert clean_in_raw <= small or small <= clean_in_raw  # one is a prefix of the other: no other draw


def test_trend_slope_and_interval_match_a_hand_computation():
    sizes = [8, 16, 32, 64]  # log2: 3, 4, 5, 6
    items = {"a": [0.1, 0.2, 0.3, 0.4], "b": [0.2, 0.2, 0.4, 0.4], "c": [0.3, 0.3, 0.3, 0.3]}
    trend = statistics.fit_trend(sizes, items)
    # Per item, slope = Sxy / Sxx with centred x (-1.5, -0.5, 0.5, 1.5), Sxx = 5: a 0.5/5, b 0.4/5, c 0.
    slopes = [0.1, 0.08, 0.0]
    mean = sum(slopes) / 3
    sd = math.sqrt(sum((s - mean) ** 2 for s in slopes) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, df=2)
    # The sizes' means (0.2, 0.2333, 0.3333, 0.3667) off their line by 0.0067, -0.02, 0.02, -0.0067: 2 df.
    means = [0.2, 0.7 / 3, 1 / 3, 1.1 / 3]
    fitted = [sum(means) / 4 + 0.06 * (c) for c in (-1.5, -0.5, 0.5, 1.5)]
    scatter = math.sqrt(sum((m - f) ** 2 for m, f in zip(means, fitted, strict=True)) / 2 / 5)
    by_sizes = 4.302652729911275 * scatter
    assert trend.slope == pytest.approx(0.06)
    # the interval is the wider of the items' (0.1314) and the sizes' (0.0406) half-widths: here the items'
    assert max(half, by_sizes) == half and by_sizes == pytest.approx(0.0406, abs=1e-4)
    assert (trend.low, trend.high) == (pytest.approx(0.06 - half), pytest.approx(0.06 + half))
    assert (round(trend.low, 4), round(trend.high, 4)) == (-0.0714, 0.1914)
    # The intercept: mean score 0.28333 at mean log2 n 4.5.
    assert trend.intercept == pytest.approx((0.2 + 0.7 / 3 + 1 / 3 + 1.1 / 3) / 4 - 0.06 * 4.5)
    assert trend.items == 3 and not trend.helps
    assert statistics.trend_sentence("the pass rate", trend, 64) == (
        "More data of this kind is not shown to help the pass rate (+6.0 points per doubling, 95 % CI -7.2 points to "
        "+19.2 points, 3 test items, one training run behind each point): the interval includes no gain, so a "
        "larger test split or more sizes would settle it."
    )


def test_the_slope_interval_widens_with_the_sizes_scatter_around_the_trend():
    """Every item moves together at each size (a run's own luck): the items agree on their slope, so the items'
    interval is narrow, but the sizes' means zigzag around the line and the interval takes that scatter in."""
    sizes = [8, 16, 32, 64]
    luck = [0.0, 0.04, -0.03, 0.05]
    items = {i: [0.3 + 0.01 * i + 0.02 * k + luck[k] for k in range(4)] for i in range(20)}
    trend = statistics.fit_trend(sizes, items)
    means = [0.3 + 0.095 + 0.02 * k + luck[k] for k in range(4)]
    centred = [-1.5, -0.5, 0.5, 1.5]
    slope = sum(c * m for c, m in zip(centred, means, strict=True)) / 5
    fitted = [sum(means) / 4 + slope * c for c in centred]
    scatter = math.sqrt(sum((m - f) ** 2 for m, f in zip(means, fitted, strict=True)) / 2 / 5)
    assert trend.slope == pytest.approx(slope)
    assert (trend.low, trend.high) == (
        pytest.approx(slope - 4.302652729911275 * scatter),
        pytest.approx(slope + 4.302652729911275 * scatter),
    )
    assert trend.low < 0 < slope  # the items alone (all the same slope) would have said "more data helps"


def test_no_zero_width_interval_is_printed():
    same = statistics.fit_trend([10, 20, 40], {"a": [1.0, 1.0, 1.0], "b": [1.0, 1.0, 1.0]})
    assert same.low is None and not same.helps
    sentence = statistics.trend_sentence("the pass rate", same, 40)
    assert "CI" not in sentence and "no interval: every size scored the same on every test item" in sentence
    two_sizes = statistics.fit_trend([10, 20], {"a": [0.2, 0.6], "b": [0.3, 0.5]})
    assert two_sizes.low is None and "a third size" in statistics.trend_sentence("x", two_sizes, 20)
    narrow = statistics.Trend(0.5, 0.0001, -0.0002, 0.0004, 40, 5)
    assert "95 % CI -0.1 points to +0.1 points" in statistics.trend_sentence("x", narrow, 40)  # was "-0.0 to +0.0"
    level = statistics.paired_difference({i: 0.5 for i in range(5)}, {i: 0.5 for i in range(5)})
    assert level.low < 0 < level.high  # all differences 0: a bounded interval, never "+0.0 to +0.0"
    assert "+0.0 points to +0.0 points" not in statistics.difference_sentence("x", "raw", "curated", level)


def test_a_flat_trend_reads_as_unlikely_to_help():
    items = {i: [0.5 + 0.001 * i + 0.0005 * (-1) ** k + 0.0003 * (i % 2) * k for k in range(5)] for i in range(6)}
    trend = statistics.fit_trend([10, 20, 40, 80, 160], items)
    assert trend.high < statistics.SMALL_SLOPE
    assert statistics.trend_sentence("similarity", trend, 40).startswith(
        "More data of this kind is unlikely to help similarity (+0.0 points per doubling"
    )


def test_a_clear_positive_trend_reads_as_doubling_raises():
    sizes = [10, 20, 40]
    items = {i: [0.2 + 0.01 * i, 0.4 + 0.01 * i, 0.6 + 0.02 * i] for i in range(5)}
    trend = statistics.fit_trend(sizes, items)
    assert trend.helps and trend.low > 0
    sentence = statistics.trend_sentence("the pass rate", trend, 40)
    assert sentence.startswith("Doubling the data from 40 to 80 examples is expected to raise the pass rate from ")
    assert f"{trend.at(40) * 100:.0f} % to {min(1, trend.at(80)) * 100:.0f} %" in sentence
    assert "5 test items" in sentence


def test_trend_needs_two_sizes_and_complete_items():
    assert statistics.fit_trend([10], {"a": [0.5]}) is None
    assert statistics.fit_trend([10, 20], {"a": [0.5]}) is None  # incomplete items are left out
    assert "Not enough" in statistics.trend_sentence("x", None, 0)


def test_paired_difference_matches_a_hand_computation():
    raw = {1: 0.0, 2: 1.0, 3: 0.0, 4: 1.0}
    curated = {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.0}  # item 5 has no pair: left out
    diff = statistics.paired_difference(raw, curated)
    # diffs 1, 0, 1, 0: mean 0.5, sd sqrt(1/3), t(0.975, 3) = 3.182446
    half = 3.182446305284263 * math.sqrt(1 / 3) / 2
    assert diff.items == 4 and diff.mean == pytest.approx(0.5)
    assert (diff.low, diff.high) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    sentence = statistics.difference_sentence("the pass rate", "raw", "curated", diff)
    assert "curated scores 100 % against 50 % for raw" in sentence and "4 test items" in sentence
    assert sentence.endswith("no clear difference.")  # the interval includes 0
    sure = statistics.paired_difference({i: 0.0 for i in range(30)}, {i: 1.0 for i in range(30)})
    assert statistics.difference_sentence("x", "raw", "curated", sure).endswith("curated is better.")
    assert statistics.paired_difference({1: 0.1}, {2: 0.2}) is None


# --- launching ----------------------------------------------------------------------------------------
@pytest.fixture
def setup(team):
    return experiment_setup(team)


def launch(setup, **kwargs):
    team, base, rubric, version = setup
    return services.launch_experiment(
        project=team.project,
        versions=[version],
        fractions=[0.25, 0.5, 1.0],
        base_model=base,
        rubric=rubric,
        seed=3,
        user=team.pm,
        **kwargs,
    )


def test_launch_freezes_nested_subsets_and_runs_them_alike(setup):
    team, base, rubric, version = setup
    experiment = launch(setup)
    points = list(Point.objects.filter(arm__experiment=experiment).select_related("version", "run").order_by("n_train"))
    assert [p.n_train for p in points] == [8, 16, 32]
    trains = [set(p.version.items.filter(split="train").values_list("content_hash", flat=True)) for p in points]
    assert trains[0] < trains[1] < trains[2]
    assert points[2].version == version  # 100 % is the version itself, not a copy
    assert (
        points[0].version.derived_from == version and points[0].version.note == f"v{version.number} · 25 % (8 examples)"
    )
    tests = [
        list(p.version.items.filter(split="test").order_by("position").values_list("content_hash", flat=True))
        for p in points
    ]
    assert tests[0] == tests[1] == tests[2]  # the same test split everywhere
    assert {p.run.seed for p in points} == {3} and len({str(p.run.hyperparameters) for p in points}) == 1
    assert points[0].run.name == "v1 · 25 % (8 examples)" and points[0].run.status == RunStatus.QUEUED
    again = launch(setup)  # the same subsets frozen once, reused
    assert set(Point.objects.filter(arm__experiment=again).values_list("version", flat=True)) == {
        p.version_id for p in points
    }


@pytest.mark.parametrize(
    "fractions,message",
    [
        ([0.125, 1.0], "12.5 % of v1's 32 training examples is 4: a point needs at least 8"),
        ([1.0], "at least two fractions"),
        ([0.5, 1.5], "outside (0, 1]"),
        ("a,b", "is not a number"),
    ],
)
def test_bad_fractions_launch_nothing(setup, fractions, message):
    team, base, rubric, version = setup
    versions_before = DatasetVersion.objects.count()
    with pytest.raises(services.ExperimentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        services.launch_experiment(
            project=team.project, versions=[version], fractions=fractions, base_model=base, rubric=rubric
        )
    assert not Run.objects.exists() and not Experiment.objects.exists()
    assert DatasetVersion.objects.count() == versions_before


def test_a_version_without_a_test_split_launches_nothing(setup):
    team, base, rubric, _ = setup
    no_test = make_dataset_version(team.project, {"train": [conversation(f"Q{i}", f"A{i}") for i in range(20)]})
    with pytest.raises(services.ExperimentError, match=f"v{no_test.number} has no test split"):
        services.launch_experiment(
            project=team.project, versions=[no_test], base_model=base, rubric=rubric, fractions=[0.5, 1.0]
        )
    assert not Run.objects.exists() and not Experiment.objects.exists()


def test_the_form_shows_the_reason_and_launches_nothing(setup):
    team, base, rubric, version = setup
    response = team.client("pm").post(
        f"/p/{team.project.slug}/experiments/new/",
        {
            "dataset_version": version.pk,
            "fractions": "0.1,1",
            "preset": "quick",
            "base_model": base.pk,
            "rubric": rubric.pk,
            "seed": 0,
        },
    )
    assert response.status_code == 200
    assert "10 % of v1&#x27;s 32 training examples is 3: a point needs at least 8" in response.content.decode()
    assert not Run.objects.exists()


# --- advancing ----------------------------------------------------------------------------------------
def test_the_experiment_advances_from_its_runs_outcomes(setup, django_capture_on_commit_callbacks):
    team, *_ = setup
    experiment = launch(setup)
    assert services.advance_experiment(experiment.pk) == ExperimentStatus.RUNNING  # nothing trained yet
    assert not Point.objects.filter(evaluation__isnull=False).exists()
    finish_runs(experiment)
    with django_capture_on_commit_callbacks() as callbacks:
        services.advance_experiment(experiment.pk)
    assert len(callbacks) == 3  # one generation task per point
    points = list(Point.objects.filter(arm__experiment=experiment).select_related("evaluation").order_by("n_train"))
    assert all(p.evaluation and p.evaluation.candidates.count() == 1 for p in points)
    assert not points[0].evaluation.comparisons.exists()  # nothing for reviewers
    evaluations = [p.evaluation_id for p in points]
    services.advance_experiment(experiment.pk)  # idempotent: no second evaluation
    assert [
        p.evaluation_id for p in Point.objects.filter(arm__experiment=experiment).order_by("n_train")
    ] == evaluations
    for point, passing, sim in zip(points, (1, 2, 4), (0.3, 0.5, 0.7), strict=True):
        fake_scores(point, passing, sim)
    assert CheckResult.objects.count() == 12
    assert services.advance_experiment(experiment.pk) == ExperimentStatus.FINISHED
    result = selectors.experiment_result(Experiment.objects.get(pk=experiment.pk))
    assert result.metrics == ["checks", "similarity"]
    rows = result.arms[0].rows
    assert [r.means["checks"].mean for r in rows] == [0.25, 0.5, 1.0]
    assert result.slope == pytest.approx(0.375)  # 0.25 -> 0.5 -> 1.0 over log2 n = 3, 4, 5
    assert result.arms[0].trends["similarity"].slope == pytest.approx(0.2)
    page = team.client("reviewer").get(experiment.get_absolute_url()).content.decode()
    assert 'class="experiment-chart"' in page and "per doubling" in page
    assert page.count('<g class="point">') == 6  # three points on each metric's chart


def test_a_failed_run_finishes_its_point_without_an_evaluation(setup):
    experiment = launch(setup)
    finish_runs(experiment, status=RunStatus.FAILED)
    assert services.advance_experiment(experiment.pk) == ExperimentStatus.FINISHED
    assert not Point.objects.filter(evaluation__isnull=False).exists()


def test_a_run_ending_and_a_check_pass_ending_advance_their_experiment(
    setup, monkeypatch, django_capture_on_commit_callbacks
):
    from apps.evaluations.check_tasks import run_checks

    sent = []
    monkeypatch.setattr(services.advance_experiment_task, "delay", sent.append)
    experiment = launch(setup)
    other = launch(setup)
    point = Point.objects.filter(arm__experiment=experiment).first()
    with django_capture_on_commit_callbacks(execute=True):
        cancel_run(run=point.run)  # the run ends (cancelled): runs sends run_ended after the commit
    assert sent == [experiment.pk]  # only the experiment that holds the run
    finish_runs(experiment)
    services.advance_experiment(experiment.pk)
    point.refresh_from_db()
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        run_checks.apply(args=(point.evaluation_id,))  # a pass of the automatic checks ends
    assert sent == [experiment.pk] and other.pk not in sent


def test_a_generation_ending_in_failure_advances_its_experiment(setup, monkeypatch, django_capture_on_commit_callbacks):
    from apps.evaluations import generation as eval_services_generation

    sent = []
    monkeypatch.setattr(services.advance_experiment_task, "delay", sent.append)
    experiment = launch(setup)
    finish_runs(experiment)
    services.advance_experiment(experiment.pk)
    point = Point.objects.filter(arm__experiment=experiment, evaluation__isnull=False).first()
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(Exception):  # noqa: B017, PT011
        eval_services_generation.run_generation(point.evaluation_id)  # the fake adapters cannot load: generation fails
    point.evaluation.refresh_from_db()
    assert point.evaluation.status == "failed" and sent == [experiment.pk]


def test_cancel_stops_every_unfinished_run(setup):
    team, *_ = setup
    experiment = launch(setup)
    first = Point.objects.filter(arm__experiment=experiment).order_by("n_train").first()
    Run.objects.filter(pk=first.run_id).update(status=RunStatus.SUCCEEDED, adapter_path="/fake")
    response = team.client("pm").post(f"/p/{team.project.slug}/experiments/{experiment.pk}/cancel/")
    assert response.status_code == 302
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.CANCELLED
    statuses = sorted(
        Run.objects.filter(experiment_points__arm__experiment=experiment).values_list("status", flat=True)
    )
    assert statuses == ["cancelled", "cancelled", "succeeded"]
    assert (
        team.client("designer").post(f"/p/{team.project.slug}/experiments/{experiment.pk}/cancel/").status_code == 403
    )


def test_curated_against_raw_is_scored_on_the_first_versions_test_split(setup):
    team, base, rubric, raw = setup
    curated = make_dataset_version(
        team.project,
        {
            "train": [conversation(f"Question {i}", f"Hi,\nAnswer {i}.\nBye") for i in range(24)]
            + [conversation("Where is #0?", "Hi,\n#0 ships today.\nBye")],  # a test example in its train split
            "test": [conversation("Other test", "Hi,\nOther.\nBye")],
        },
    )
    experiment = services.launch_experiment(
        project=team.project,
        versions=[raw, curated],
        fractions=[0.5, 1.0],
        base_model=base,
        rubric=rubric,
        labels=["raw", "curated"],
    )
    arms = list(experiment.arms.order_by("position"))
    assert [a.label for a in arms] == ["raw", "curated"] and arms[1].dropped == 1 and arms[1].train_total == 24
    raw_test = list(raw.items.filter(split="test").order_by("position").values_list("content_hash", flat=True))
    for point in Point.objects.filter(arm=arms[1]).select_related("version"):
        assert (
            list(point.version.items.filter(split="test").order_by("position").values_list("content_hash", flat=True))
            == raw_test
        )
    finish_runs(experiment)
    services.advance_experiment(experiment.pk)
    for point in Point.objects.filter(arm__experiment=experiment).select_related("evaluation", "arm"):
        fake_scores(point, 4 if point.arm.label == "curated" else 1, 0.5)
    result = selectors.experiment_result(experiment)
    diff = result.differences["checks"]
    assert (diff.items, diff.first, diff.second) == (4, 0.25, 1.0)
    assert result.verdicts["checks"].startswith(
        "On the share of replies passing every automatic check, "
        "curated (24 examples) scores 100 % against 25 % for raw (32 examples)"
    )


def test_cli_prints_the_table_and_the_slope_last(setup, capsys):
    team, base, rubric, version = setup
    call_command(
        "scaling_experiment",
        "--project",
        team.project.slug,
        "--dataset-version",
        str(version.number),
        "--fractions",
        "0.25,0.5,1",
        "--base-model",
        "tiny",
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Experiment #") and "3 runs queued" in lines[0]
    assert lines[1].split()[:2] == ["data", "examples"] and "v1 25 %" in lines[2]
    assert lines[-1] == "slope=pending"
    experiment = Experiment.objects.get()
    finish_runs(experiment)
    services.advance_experiment(experiment.pk)
    for point, passing in zip(
        Point.objects.filter(arm__experiment=experiment).select_related("evaluation").order_by("n_train"),
        (1, 2, 4),
        strict=True,
    ):
        fake_scores(point, passing, 0.5)
    from apps.experiments.management.commands.scaling_experiment import Command

    command = Command()
    command.print_result(experiment, None)
    assert capsys.readouterr().out.strip().splitlines()[-1] == "slope=0.3750"


def test_cli_bad_input_is_a_clear_error(setup):
    team, _, _, version = setup
    with pytest.raises(CommandError, match="a point needs at least 8"):
        call_command(
            "scaling_experiment",
            "--project",
            team.project.slug,
            "--dataset-version",
            str(version.number),
            "--fractions",
            "0.125,1",
        )
    with pytest.raises(CommandError, match="no dataset version 99"):
        call_command("scaling_experiment", "--project", team.project.slug, "--dataset-version", "99")
    assert not Run.objects.exists()


def test_forms_still_start_from_the_newest_real_version_not_a_subset(setup):
    team, _, _, version = setup
    launch(setup)
    assert DatasetVersion.objects.filter(derived_from=version).count() == 2
    for url in ("runs/new/", "evals/new/"):
        page = team.client("pm").get(f"/p/{team.project.slug}/{url}").content.decode()
        assert f'<option value="{version.pk}" selected>' in page, url


# --- the same number of training steps for every size -------------------------------------------------------------
def test_fixed_steps_train_every_size_the_same_number_of_steps_so_smaller_subsets_get_more_epochs(setup):
    experiment = launch(setup, steps=12)
    points = list(Point.objects.filter(arm__experiment=experiment).select_related("run").order_by("n_train"))
    assert experiment.steps == 12
    assert [p.run.hyperparameters["max_steps"] for p in points] == [12, 12, 12]
    assert [p.run.total_steps for p in points] == [12, 12, 12]
    # without the option, each run trains the preset's one epoch: fewer steps for fewer examples (batch 8)
    by_epochs = launch(setup)
    steps = [
        p.run.total_steps
        for p in Point.objects.filter(arm__experiment=by_epochs).select_related("run").order_by("n_train")
    ]
    assert steps == [1, 2, 4] and by_epochs.steps is None


def test_fixed_steps_out_of_range_launch_nothing_and_the_form_offers_the_option(setup):
    team, base, rubric, version = setup
    with pytest.raises(services.ExperimentError, match="Training steps must be between 1 and"):
        launch(setup, steps=0)
    assert not Run.objects.exists() and not Experiment.objects.exists()
    response = team.client("pm").post(
        f"/p/{team.project.slug}/experiments/new/",
        {
            "dataset_version": version.pk,
            "fractions": "0.25,1",
            "preset": "quick",
            "steps": 20,
            "base_model": base.pk,
            "rubric": rubric.pk,
            "seed": 0,
        },
    )
    experiment = Experiment.objects.get()
    assert response.status_code == 302 and experiment.steps == 20
    page = team.client("pm").get(experiment.get_absolute_url()).content.decode()
    assert "20 training steps for every size" in page


# --- the demo's one-click experiment -----------------------------------------------------------------------------
def test_the_demo_button_launches_the_fixed_step_scaling_experiment_on_the_curated_version(db, client):
    from apps.demo import services as demo

    project = demo.seed_demo(size=80, quality_report=False).project
    curated = project.dataset_versions.get(number=2)
    client.force_login(project.members.get(username="pat"))
    page = client.get(f"/p/{project.slug}/experiments/").content.decode()
    plan = demo.demo_experiment_plan(project)
    assert 'id="demo-experiment"' in page and f"the same {plan.steps} training steps" in page
    response = client.post(f"/p/{project.slug}/experiments/demo/")
    experiment = Experiment.objects.get()
    assert response.status_code == 302 and response.url == experiment.get_absolute_url()
    assert experiment.steps == demo.DEMO_EXPERIMENT_STEPS and experiment.test_version == curated
    assert list(experiment.fractions) == list(demo.DEMO_EXPERIMENT_FRACTIONS)
    runs = [p.run for p in Point.objects.filter(arm__experiment=experiment).select_related("run").order_by("n_train")]
    assert [r.total_steps for r in runs] == [demo.DEMO_EXPERIMENT_STEPS] * len(demo.DEMO_EXPERIMENT_FRACTIONS)
    assert [p.n_train for p in Point.objects.filter(arm__experiment=experiment).order_by("n_train")] == plan.sizes
    # a reviewer may not launch it, and another project has no button
    client.force_login(project.members.get(username="rui"))
    assert client.post(f"/p/{project.slug}/experiments/demo/").status_code == 403
    assert Experiment.objects.count() == 1


def test_other_projects_have_no_demo_button(setup):
    team = setup[0]
    page = team.client("pm").get(f"/p/{team.project.slug}/experiments/").content.decode()
    assert 'id="demo-experiment"' not in page
    assert team.client("pm").post(f"/p/{team.project.slug}/experiments/demo/").status_code == 302
    assert not Experiment.objects.exists()


def test_cli_steps_option_trains_every_size_the_same_number_of_steps(setup, capsys):
    team, base, rubric, version = setup
    call_command(
        "scaling_experiment",
        "--project",
        team.project.slug,
        "--dataset-version",
        str(version.number),
        "--fractions",
        "0.25,1",
        "--steps",
        "7",
        "--base-model",
        "tiny",
    )
    experiment = Experiment.objects.get()
    assert experiment.steps == 7
    assert {p.run.total_steps for p in Point.objects.filter(arm__experiment=experiment).select_related("run")} == {7}


# --- a killed worker: the experiment's runs are resumed like single runs, and the experiment catches up ------------
def test_a_killed_workers_experiment_run_is_re_queued_and_the_periodic_pass_advances_the_experiment(
    setup, django_capture_on_commit_callbacks, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    from apps.runs import recovery

    experiment = launch(setup)
    point = Point.objects.filter(arm__experiment=experiment).select_related("run").order_by("n_train").first()
    Run.objects.filter(pk=point.run_id).update(
        status=RunStatus.RUNNING,
        worker_id="gone-host:4242:123:abcdef",
        heartbeat_at=timezone.now() - timedelta(hours=1),
        attempts=1,
        enqueued_at=timezone.now(),
    )
    sent = []
    monkeypatch.setattr("apps.runs.launching.train_run.delay", lambda pk: sent.append(pk))
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.reap()["runs"] == [point.run_id]  # the reaper's rule for every run, experiment or not
    assert point.run_id in sent
    # the re-sent run finishes on another worker; no signal reaches the experiment (its message was the lost one)
    finish_runs(experiment)
    assert Point.objects.filter(arm__experiment=experiment, evaluation__isnull=False).count() == 0
    assert services.advance_open_experiments() == [experiment.pk]
    assert Point.objects.filter(arm__experiment=experiment, evaluation__isnull=True).count() == 0
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.RUNNING  # scored once the evaluations finish
