"""In the browser: a designer tries a prompt on the validation split in the prompt workspace and reads its scored
outputs; a PM sees what is not evaluated on current data and compares two evaluations example by example."""

from __future__ import annotations

import pytest

from apps.accounts.models import Role
from apps.prompts.models import PromptStatus, PromptVersion
from tests.e2e.conftest import login, screenshot
from tests.eval_setup import make_rubric, make_run, register_tiny_model
from tests.factories import MembershipFactory, ProjectFactory, UserFactory
from tests.test_freshness import evaluate, fill, questions, version
from tests.test_prompts import checked_rubric, house_version

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def team_of(*members):
    project = ProjectFactory(name="Support replies", slug="support")
    users = {}
    for name, role in members:
        users[name] = UserFactory(username=name)
        MembershipFactory(project=project, role=role, user=users[name])
    return project, users


def test_designer_runs_a_prompt_on_the_validation_split_and_reads_the_scored_outputs(
    new_page, password, settings, tiny_model_dir, eager
):
    project, _ = team_of(("dee", Role.DESIGNER))
    register_tiny_model(settings, tiny_model_dir)
    house_version(project)
    checked_rubric(project)

    page = new_page()
    login(page, "dee", password)
    page.goto("/p/support/")
    page.get_by_role("link", name="Prompts").first.click()
    page.locator("#versions-empty").wait_for()
    page.get_by_label("System prompt").fill("Greet the customer by name, state the facts given, sign off.")
    page.get_by_label("#1: Customer: Bo").check()
    page.get_by_label("Note").fill("house style with one example")
    page.get_by_role("button", name="Run on validation split").click()  # scored inline (eager), then the version page
    page.locator("#score-summary").wait_for()
    version = PromptVersion.objects.get()
    assert version.status == PromptStatus.SCORED and version.shot_positions == [1]
    assert page.locator("#prompt-outputs tbody tr").count() == 3
    assert page.locator("#criterion-checks").get_by_text("Facts").is_visible()
    assert "Hi Cy,\nOrder #3 ships Friday." in page.locator("#prompt-outputs").inner_text().replace("\r", "")
    screenshot(page, "prompt-version-scored")

    page.get_by_role("link", name="Edit as a new version").click()  # starts from v1's prompt and examples
    assert page.get_by_label("System prompt").input_value().startswith("Greet the customer by name")
    assert page.get_by_label("#1: Customer: Bo").is_checked()
    assert page.locator("#prompt-versions").get_by_text("best").is_visible()


def test_pm_sees_stale_work_and_compares_two_evaluations_sorted_by_regression(
    new_page, password, tmp_path, settings, tiny_model_dir
):
    project, users = team_of(("pat", Role.PM), ("dee", Role.DESIGNER))
    register_tiny_model(settings, tiny_model_dir)
    shared = questions(4)
    v1 = version(project, shared)
    rubric = make_rubric(project)
    run = make_run(project, v1, register_tiny_model(settings, tiny_model_dir), tmp_path / "adapter")
    a = evaluate(project, v1, rubric, run, user=users["dee"], name="Before")
    fill(a, run, [0.9, 0.5, 0.5, 0.2], [1, 1, 0, 0])
    v2 = version(project, shared + questions(1, 40))

    page = new_page()
    login(page, "pat", password)
    page.goto("/p/support/freshness/")
    assert page.locator("#freshness-runs").get_by_text("not evaluated on current data").is_visible()
    assert page.get_by_label(f"Re-evaluate {run}").is_checked()
    page.get_by_label("Re-evaluate the ticked runs and their baselines on").select_option(str(v2.pk))
    page.get_by_role("button", name="Re-evaluate").click()
    page.get_by_text("Queued Re-evaluation on v2").wait_for()
    b = project.evaluations.get(name="Re-evaluation on v2")
    fill(b, run, [0.9, 0.8, 0.1, 0.2, 0.5], [1, 1, 1, 0, 1])

    page.goto("/p/support/freshness/")
    assert page.locator("#freshness-runs").get_by_text("not evaluated on current data").count() == 0
    page.get_by_role("link", name="Compare two evaluations").click()
    page.get_by_label("Before").select_option(str(a.pk))
    page.get_by_label("After").select_option(str(b.pk))
    page.get_by_role("button", name="Compare").click()
    page.locator("#compare-summary").wait_for()
    assert page.locator("#count-regressed").inner_text() == "1" and page.locator("#count-improved").inner_text() == "1"
    assert page.locator("#compare-rows tbody tr").first.get_attribute("data-outcome") == "regressed"
    assert "a change of 0.25" in page.locator("#win-change").inner_text()
    screenshot(page, "evaluation-diff")
    page.get_by_role("link", name="biggest improvement first").click()
    page.wait_for_url(lambda url: "sort=improvement" in url)
    assert page.locator("#compare-rows tbody tr").first.get_attribute("data-outcome") == "improved"
