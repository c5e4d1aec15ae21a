"""A designer adds an automatic check to a rubric in the browser; once an evaluation's outputs are checked, the
results page shows the check's pass rate under its criterion, beside the reviewers' scores."""

import pytest

from apps.accounts.models import Role
from apps.evaluations import automatic, selectors, services
from apps.evaluations.models import Generation, Rubric
from tests.e2e.conftest import login, screenshot
from tests.eval_setup import fake_outputs, make_version, register_tiny_model
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_designer_adds_a_check_and_the_results_page_shows_it_beside_the_scores(
    new_page, password, settings, tiny_model_dir
):
    project = ProjectFactory(name="Support replies", slug="support")
    for name, role in (("dee", Role.DESIGNER), ("pat", Role.PM)):
        MembershipFactory(project=project, role=role, user=UserFactory(username=name))
    base = register_tiny_model(settings, tiny_model_dir)
    version = make_version(project, test_count=4)

    designer = new_page()
    login(designer, "dee", password)
    designer.goto("/p/support/evals/rubrics/new/")
    designer.get_by_label("Name", exact=True).first.fill("House style")
    criterion = designer.locator("fieldset", has_text="Criterion 1")
    criterion.get_by_label("Name").fill("Greets by name")
    criterion.get_by_label("Scale").select_option("pass_fail")
    check = designer.locator("fieldset", has_text="Check 1")
    check.get_by_label("Criterion").fill("Greets by name")
    check.get_by_label("Check", exact=True).select_option(label="matches the regular expression")
    check.get_by_label("Text").fill("^Hi (")  # does not compile: refused, and the form keeps the input
    designer.get_by_role("button", name="Save rubric").click()
    designer.get_by_text("does not compile").wait_for()
    check = designer.locator("fieldset", has_text="Check 1")
    assert check.get_by_label("Criterion").input_value() == "Greets by name"
    check.get_by_label("Check", exact=True).select_option(label="starts with")
    check.get_by_label("Text").fill("Hi {customer},")
    designer.get_by_role("button", name="Save rubric").click()
    designer.get_by_text('starts with "Hi {customer},"').wait_for()

    rubric = Rubric.objects.get(project=project, name="House style")
    pm_user = project.memberships.get(role=Role.PM).user
    evaluation = services.create_evaluation(
        project=project,
        dataset_version=version,
        rubric=rubric,
        base_model=base,
        enqueue=False,
        user=pm_user,
        candidates=[services.CandidateSpec("base"), services.CandidateSpec("prompt")],
    )
    fake_outputs(evaluation)
    for item in selectors.eval_items(evaluation):
        item.messages = [{"role": "user", "content": "Customer: Cy\nMessage: where is my order?"}, *item.messages[-1:]]
        item.save()
    Generation.objects.filter(candidate__kind="base").update(output="Hello there.")  # base never greets by name
    automatic.run_checks(evaluation.pk)

    pm = new_page()
    login(pm, "pat", password)
    pm.goto(f"/p/support/evals/{evaluation.pk}/results/")
    row = pm.locator("#criteria tr.check-row")
    row.wait_for()
    assert 'starts with "Hi {customer},"' in row.inner_text()
    cells = row.locator("td")
    assert "0% (0-49%, n=4)" in cells.nth(1).inner_text() and "100% (51-100%, n=4)" in cells.nth(2).inner_text()
    # the row sits right under the criterion the reviewers score
    previous = pm.locator("#criteria tr.check-row").locator("xpath=preceding-sibling::tr[1]")
    assert "Greets by name" in previous.inner_text()
    screenshot(pm, "results-with-automatic-check")
