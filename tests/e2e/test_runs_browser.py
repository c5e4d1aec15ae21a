"""A PM launches a run from the browser and watches the loss curve grow without reloading the page; a real
Celery worker subprocess trains it (the tiny model, so it takes seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.runs.models import Run, RunMetric, RunStatus
from tests import runs_setup
from tests.e2e.conftest import login, screenshot
from tests.runs_setup import small_version
from tests.worker_process import running_worker, wait_for

tiny_base_model = runs_setup.tiny_base_model


UPDATE_MS = 30_000  # the run page polls every 2 s; a loaded machine may render slowly

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_pm_launches_a_run_and_watches_the_loss_curve_update(
    new_page, password, team, tiny_base_model, tiny_model_dir, tmp_path, live_server
):
    version = small_version(team.project)
    env = {"FTSTUDIO_MODEL_ROOTS": str(Path(tiny_model_dir).parent)}
    with running_worker(tmp_path, queues="gpu,default", extra_env=env) as worker:
        page = new_page()
        login(page, "pm", password)
        page.goto(f"{live_server.url}/p/support/runs/")
        page.get_by_role("link", name="New run").click()
        page.get_by_label("Dataset version").select_option(str(version.pk))
        page.get_by_label("Preset").select_option("quick")
        assert not page.get_by_label("Max steps").is_visible()  # the knobs wait behind "Advanced"
        page.get_by_text("Advanced: training settings").click()
        page.get_by_label("Max steps").fill("160")
        page.get_by_label("Batch size").fill("2")
        page.get_by_label("Max sequence length").fill("128")
        page.get_by_label("Max sequence length").blur()
        page.locator("#estimate-steps").filter(has_text="160").wait_for()  # the estimate followed the form
        page.get_by_label("Launch without trying a prompt first").check()  # no prompt version in this project
        page.get_by_role("button", name="Launch run").click()
        page.get_by_text("Queued Run").wait_for()
        url = page.url

        # The worker's pace depends on the machine's load: wait on its progress, then give the page (which polls
        # every 2 s) a fixed short time to show it.
        wait_for(lambda: RunMetric.objects.filter(train_loss__isnull=False).count() >= 2, 120, worker, "two losses")
        page.locator("#loss-chart").wait_for(timeout=UPDATE_MS)
        first = int(page.locator("#loss-chart").get_attribute("data-points"))
        wait_for(lambda: RunMetric.objects.count() > first, 120, worker, "more losses")
        page.wait_for_function(
            f"() => {{ const c = document.querySelector('#loss-chart');"
            f" return c && Number(c.dataset.points) > {first}; }}",
            timeout=UPDATE_MS,
        )
        assert page.url == url  # updated in place by htmx, not by reloading
        screenshot(page, "runs-live-loss")
        assert page.get_by_role("button", name="Cancel run").is_visible()
        wait_for(lambda: Run.objects.filter(status=RunStatus.SUCCEEDED).exists(), 120, worker, "the run to finish")
        page.locator("#run-status", has_text="Succeeded").wait_for(timeout=UPDATE_MS)
        # the same htmx swap that finished the status retires Cancel and offers the adapter
        assert page.get_by_role("button", name="Cancel run").count() == 0
        assert page.get_by_role("link", name="Download adapter").is_visible()
        assert worker.process.poll() is None
    run = Run.objects.get()
    assert run.status == RunStatus.SUCCEEDED and run.step == 160
    page.reload()
    assert page.get_by_role("link", name="Download adapter").is_visible()
    assert page.get_by_role("button", name="Cancel run").count() == 0
