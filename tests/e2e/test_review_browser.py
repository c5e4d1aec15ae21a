"""Journeys 2-4 in a browser: a PM creates an evaluation (base, prompt baseline, one tuned run), two reviewers
judge the blind pairs with the keyboard, and the results page shows the verdict, intervals and examples.
A model output containing a <script> is shown as text and never runs."""

import pytest

from apps.accounts.models import Role
from apps.evaluations.models import Evaluation, EvaluationStatus, Generation
from tests.e2e.conftest import judge_every_pair, login, screenshot
from tests.eval_setup import make_rubric, make_run, make_version, register_tiny_model, save_adapter
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SCRIPT = "<script>window.__pwned = 1</script>"


def review_all(page) -> int:
    """Judge every pair this reviewer is given; on each, no injected script ran and the ideal output toggles."""
    page.get_by_role("navigation", name="Support replies").get_by_role("link", name="Review queue").click()

    def look(page, judged):
        assert page.evaluate("window.__pwned") is None
        page.locator("body").press("i")
        assert page.locator("#ideal").is_visible()

    return judge_every_pair(page, lambda judged: "a" if judged % 3 else "t", on_pair=look)


def test_pm_evaluates_two_reviewers_judge_blind_and_everyone_reads_the_results(
    new_page, password, settings, tiny_model_dir, tmp_path, eager
):
    project = ProjectFactory(name="Support replies", slug="support")
    users = {}
    for name, role in (("pat", Role.PM), ("rev1", Role.REVIEWER), ("rev2", Role.REVIEWER)):
        users[name] = MembershipFactory(project=project, role=role, user=UserFactory(username=name)).user
    base = register_tiny_model(settings, tiny_model_dir)
    version = make_version(project, test_count=2)
    make_rubric(project)
    run = make_run(project, version, base, save_adapter(tiny_model_dir, tmp_path / "adapter"))

    pm = new_page()
    login(pm, "pat", password)
    pm.goto("/p/support/evals/")
    pm.get_by_role("link", name="New evaluation").click()
    pm.get_by_label("Dataset version").select_option(label="v1 (2 test examples)")
    pm.get_by_label("Rubric").select_option(label="House style v1")
    pm.get_by_label("Base model", exact=True).select_option(label="Tiny Secret Llama")
    pm.get_by_label("Candidate: base model", exact=True).check()
    pm.get_by_label("Candidate: base model + prompt (prompt-only baseline)").check()
    pm.get_by_label(f"{run} ·", exact=False).check()
    pm.get_by_label("Max new tokens").fill("4")
    pm.get_by_role("button", name="Generate outputs").click()
    pm.get_by_text("Ready for review").wait_for()
    evaluation = Evaluation.objects.get(project=project)
    assert evaluation.status == EvaluationStatus.READY and evaluation.done == 6
    # a model wrote HTML: it must be shown as text everywhere
    Generation.objects.filter(candidate__evaluation=evaluation, candidate__kind="run").update(output=SCRIPT)

    for name in ("rev1", "rev2"):
        page = new_page()
        login(page, name, password)
        page.goto("/p/support/")
        assert review_all(page) == 6  # 2 examples x 3 candidate pairs, each pair judged by both reviewers
        if name == "rev1":
            screenshot(page, "review-queue-done")

    pm.goto(f"/p/support/evals/{evaluation.pk}/results/")
    verdict = pm.locator("#verdict").inner_text()
    # two test items cannot settle anything: the verdict says so, with its interval and n
    assert (
        verdict.startswith(("Tuned run", "No clear difference yet between Tuned run")) and "2 items judged" in verdict
    )
    assert "is better than" not in verdict
    intervals = pm.locator("#win-rates .ci").all_inner_texts()
    assert all("decided item" in text and "(95% CI " in text for text in intervals)
    assert pm.locator("#agreement").get_by_text("Cohen's kappa").count() == 1
    examples = pm.locator("#examples")
    assert examples.locator("article").count() == 2
    assert examples.get_by_text(SCRIPT).count() == 2  # the script is visible as text, once per example
    assert pm.evaluate("window.__pwned") is None
    pm.get_by_role("link", name="Reviewers disagree").click()
    pm.locator("#examples .muted").first.wait_for()
    screenshot(pm, "evaluation-results")
