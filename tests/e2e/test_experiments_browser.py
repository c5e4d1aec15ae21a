"""A PM launches a data-scaling experiment from the browser; the page follows its points without a reload and,
once they are scored, shows the chart with intervals and the sentence. Runs finish as fakes (no worker): the
page, not the training, is under test here."""

from __future__ import annotations

import pytest

from apps.experiments import services
from apps.experiments.models import Experiment, Point
from tests.e2e.conftest import login, screenshot
from tests.experiments_setup import experiment_setup, fake_scores, finish_runs

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

UPDATE_MS = 30_000  # the page polls every 5 s; a loaded machine may render slowly


def test_pm_launches_an_experiment_and_sees_the_curve(new_page, password, team, live_server):
    _, base, rubric, version = experiment_setup(team)
    page = new_page()
    login(page, "pm", password)
    page.goto(f"{live_server.url}/p/support/experiments/")
    page.get_by_role("link", name="New experiment").click()
    page.get_by_label("Dataset version").select_option(str(version.pk))
    page.get_by_label("Fractions").fill("0.1,1")
    page.get_by_role("button", name="Launch experiment").click()
    page.get_by_text("10 % of v1's 32 training examples is 3: a point needs at least 8").wait_for()
    assert not Experiment.objects.exists()

    page.get_by_label("Fractions").fill("0.25,0.5,1")
    page.get_by_role("button", name="Launch experiment").click()
    page.locator("#experiment-status").filter(has_text="Running").wait_for()
    experiment = Experiment.objects.get()
    assert page.locator("#experiment-points tbody tr").count() == 3
    assert "training queued" in page.locator("#experiment-points").inner_text()

    finish_runs(experiment)
    services.advance_experiment(experiment.pk)
    points = Point.objects.filter(arm__experiment=experiment).select_related("evaluation").order_by("n_train")
    for point, passing, similarity in zip(points, (1, 2, 4), (0.3, 0.5, 0.7), strict=True):
        fake_scores(point, passing, similarity)
    services.advance_experiment(experiment.pk)
    page.locator("#experiment-status").filter(has_text="Finished").wait_for(timeout=UPDATE_MS)  # htmx swapped it in
    chart = page.locator('svg.experiment-chart[data-metric="checks"]')
    assert chart.locator("g.point").count() == 3 and chart.locator("line.trend").count() == 1
    sentence = page.locator('p.trend-sentence[data-metric="checks"]').inner_text()
    assert "per doubling" in sentence and "4 test items" in sentence
    first = page.locator("#experiment-points tbody tr").first.inner_text()
    assert "v1 · 25 %" in first and "25 % (5–70 %)" in first and "30 % (6–73 %)" in first  # pass rate, similarity
    screenshot(page, "experiment")

    page.goto(f"{live_server.url}/p/support/experiments/")
    page.get_by_role("link", name=experiment.name).wait_for()


def test_pm_cancels_an_experiment_and_every_queued_run_stops(new_page, password, team, live_server):
    _, base, rubric, version = experiment_setup(team)
    experiment = services.launch_experiment(
        project=team.project, versions=[version], fractions=[0.5, 1.0], base_model=base, rubric=rubric
    )
    page = new_page()
    login(page, "pm", password)
    page.goto(f"{live_server.url}{experiment.get_absolute_url()}")
    page.get_by_role("button", name="Cancel experiment").click()
    page.locator("#experiment-status").filter(has_text="Cancelled").wait_for()
    assert page.get_by_role("button", name="Cancel experiment").count() == 0
    assert set(Point.objects.filter(arm__experiment=experiment).values_list("run__status", flat=True)) == {"cancelled"}
    page.locator("#experiment-points a").first.click()  # the run page names its subset honestly
    page.get_by_text("v1 · 50 % (16 examples)").first.wait_for()


def test_demo_pm_runs_the_one_click_experiment_then_curated_against_raw_and_sees_raw_runs_stale(new_page, live_server):
    """The demo's pages: the button launches the fixed-step scaling experiment on the curated v2; a curated (v2) vs
    raw (v1) experiment puts both arms in one table; once its runs finish, the raw arm's runs (parts of v1) are
    marked "not evaluated on current data" on Current data."""
    from apps.demo import services as demo

    seeded = demo.seed_demo(size=80, quality_report=False)
    slug = seeded.project.slug
    page = new_page()
    login(page, "pat", seeded.logins["pat"])
    page.goto(f"{live_server.url}/p/{slug}/experiments/")
    page.get_by_role("button", name="Run the demo scaling experiment").click()
    page.locator("#experiment-status").filter(has_text="Running").wait_for()
    assert "30 training steps for every size" in page.content()
    assert page.locator("#experiment-points tbody tr").count() == len(demo.DEMO_EXPERIMENT_FRACTIONS)
    scaling = Experiment.objects.get()
    assert scaling.steps == 30 and scaling.test_version.number == 2

    page.goto(f"{live_server.url}/p/{slug}/experiments/new/")
    curated, raw = (seeded.project.dataset_versions.get(number=n) for n in (2, 1))
    page.get_by_label("Dataset version").select_option(str(curated.pk))
    page.get_by_label("Compare with (optional)").select_option(str(raw.pk))
    page.locator("#id_label").fill("curated")
    page.locator("#id_versus_label").fill("raw")
    page.get_by_label("Fractions").fill("0.5,1")
    page.get_by_label("Same number of training steps for every size").fill("30")
    page.get_by_role("button", name="Launch experiment").click()
    page.locator("#experiment-status").filter(has_text="Running").wait_for()
    pair = Experiment.objects.exclude(pk=scaling.pk).get()
    table = page.locator("#experiment-points").inner_text()
    assert "curated" in table and "raw" in table and page.locator("#experiment-points tbody tr").count() == 4
    screenshot(page, "demo-curated-vs-raw")

    finish_runs(pair)
    page.goto(f"{live_server.url}/p/{slug}/freshness/")
    raw_runs = Point.objects.filter(arm__experiment=pair, arm__label="raw").values_list("run_id", flat=True)
    for run_id in raw_runs:
        row = page.locator(f"tr:has(#run-{run_id})")
        assert "not evaluated on current data" in row.inner_text()
    for run_id in Point.objects.filter(arm__experiment=pair, arm__label="curated").values_list("run_id", flat=True):
        assert "current" in page.locator(f"tr:has(#run-{run_id})").inner_text()
        assert "not evaluated" not in page.locator(f"tr:has(#run-{run_id})").inner_text()
