"""The whole loop on the seeded demo, in a browser, as the three users do it.

Designer fixes a flagged example and freezes a version; PM launches a short run and an evaluation of
base vs prompt-only vs tuned; reviewers judge the blind pairs; the results page gives a verdict.
Training and generation run on a real Celery worker subprocess with the shipped 135M model, as under
`make run`; the run is cut to a few steps so the test fits CI's budget. Screenshots of each step go to
var/screenshots/journey-*.png.
"""

from __future__ import annotations

import re

import pytest

from apps.datasets.models import DatasetVersion, Example
from apps.demo import generator, services
from apps.evaluations.models import Evaluation, Rubric
from apps.runs.models import Run
from tests.e2e.conftest import judge_every_pair, login, screenshot
from tests.worker_process import purge_queues, start_worker, wait_for_ping

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

DEMO_SIZE = 30  # clean examples: 24 train / 3 val / 3 test, so the run and the evaluation stay short
RUN_STEPS = 2  # the quick preset cut to two optimizer steps of 4 examples: training shown, short enough for CI
SLOW = 420_000  # ms: training and generation on a shared 2-core CPU


def fixed_reply(example: Example) -> str:
    """The house-style reply a designer writes for a flagged example: greeting, the facts, sign-off."""
    fields = generator.parse_input(example.messages[0]["content"])
    return generator.format_reply(name=fields["customer"], answer=fields["facts"])


def designer_fixes_a_flagged_example_and_freezes_a_version(page, slug: str) -> None:
    page.goto(f"/p/{slug}/data/quality/")
    personal = page.locator("section", has=page.get_by_role("heading", name=re.compile("Personal data")))
    personal.wait_for()
    screenshot(page, "journey-1-quality-report")
    with page.expect_navigation():  # the load event: htmx (deferred) is watching the editor before we type
        personal.locator("a[href*='/examples/']").first.click()
    page.get_by_role("heading", name=re.compile(r"Example #\d+")).wait_for()
    pk = int(re.search(r"/examples/(\d+)/", page.url).group(1))
    example = Example.objects.get(pk=pk)
    assert example.metadata.get("flaw") == "personal_data"

    page.get_by_role("textbox", name=re.compile("Ideal response")).fill(fixed_reply(example))
    page.get_by_text(re.compile(r"Saved · revision 2")).wait_for()
    page.get_by_role("button", name=re.compile("^Approve")).click()
    page.locator("#status-badge", has_text="Approved").wait_for()
    screenshot(page, "journey-2-fixed-example")
    example.refresh_from_db()
    assert "@" not in example.ideal_output and example.status == "approved"

    page.goto(f"/p/{slug}/data/versions/")
    page.get_by_role("button", name="Freeze version").click()
    page.get_by_text(f"Froze v3: {DEMO_SIZE + 1} approved examples").wait_for()  # v1 raw, v2 curated are seeded
    screenshot(page, "journey-3-version-frozen")


def version_pk(slug: str, number: int) -> int:
    return DatasetVersion.objects.get(project__slug=slug, number=number).pk


def pm_launches_a_short_run_and_watches_it_finish(page, slug: str) -> Run:
    page.goto(f"/p/{slug}/runs/new/")
    page.get_by_label("Dataset version").select_option(value=str(version_pk(slug, 3)))
    page.get_by_label("Preset").select_option("quick")
    page.get_by_text("Advanced: training settings").click()
    page.get_by_label("Max steps").fill(str(RUN_STEPS))
    page.get_by_label("Batch size").fill("4")
    page.get_by_label("Max sequence length").fill("160")
    page.get_by_label("Launch without trying a prompt first").check()  # the journey has no prompt version
    page.get_by_role("button", name="Launch run").click()
    page.locator("#run-status").wait_for()
    screenshot(page, "journey-4-run-started")
    page.locator("#run-status", has_text="Succeeded").wait_for(timeout=SLOW)
    page.locator("#loss-chart").wait_for()
    screenshot(page, "journey-5-run-succeeded")
    run = Run.objects.get(project__slug=slug)
    assert run.step == RUN_STEPS and run.adapter_path
    return run


def pm_evaluates_base_prompt_and_tuned(page, slug: str, run: Run) -> Evaluation:
    page.goto(f"/p/{slug}/evals/")
    page.get_by_role("link", name="New evaluation").click()
    page.get_by_label("Dataset version").select_option(value=str(version_pk(slug, 3)))
    page.get_by_label("Rubric").select_option(value=str(Rubric.objects.get(project__slug=slug).pk))
    page.get_by_label("Candidate: base model", exact=True).check()
    page.get_by_label("Candidate: base model + prompt (prompt-only baseline)").check()
    page.get_by_label("System prompt").fill(generator.HOUSE_STYLE_PROMPT)
    page.get_by_label("Few shot").fill("0")
    page.get_by_label(f"{run} ·", exact=False).check()
    page.get_by_label("Max new tokens").fill("24")
    page.get_by_label("Reviewers per pair").fill("1")
    page.get_by_role("button", name="Generate outputs").click()
    page.locator("#status .badge", has_text=re.compile("Ready for review|Failed")).wait_for(timeout=SLOW)
    screenshot(page, "journey-6-evaluation-generated")
    evaluation = Evaluation.objects.get(project__slug=slug)
    assert evaluation.status == "ready", evaluation.error
    assert evaluation.done == 3 * evaluation.dataset_version.split_counts["test"]
    return evaluation


def reviewer_judges_every_pair(page, slug: str) -> int:
    """Score each criterion, pick a side with a key (tie sometimes), submit with Ctrl+Enter."""
    page.goto(f"/p/{slug}/evals/review/")

    def first_pair_screenshot(page, judged):
        if judged == 0:
            screenshot(page, "journey-7-blind-pair")

    return judge_every_pair(
        page, lambda judged: "b" if judged % 4 else "t", on_pair=first_pair_screenshot, score="last", limit=40
    )


def test_the_demo_loop_from_a_flagged_example_to_a_verdict(new_page, tmp_path):
    seeded = services.seed_demo(size=DEMO_SIZE)
    slug = seeded.project.slug
    logins = seeded.logins
    purge_queues()
    worker = start_worker(tmp_path / "worker.log")  # warms up while the designer works
    try:
        designer = new_page()
        login(designer, "dana", logins["dana"])
        designer_fixes_a_flagged_example_and_freezes_a_version(designer, slug)

        wait_for_ping(worker)
        pm = new_page()
        login(pm, "pat", logins["pat"])
        run = pm_launches_a_short_run_and_watches_it_finish(pm, slug)
        evaluation = pm_evaluates_base_prompt_and_tuned(pm, slug, run)

        reviewer = new_page()
        login(reviewer, "rui", logins["rui"])
        pairs = evaluation.dataset_version.split_counts["test"] * 3
        assert reviewer_judges_every_pair(reviewer, slug) == pairs

        pm.goto(f"/p/{slug}/evals/{evaluation.pk}/results/")
        verdict = pm.locator("#verdict").inner_text()
        assert "judgments" in verdict and "95% CI" in verdict
        screenshot(pm, "journey-8-results")
    except Exception:
        print(worker.log()[-4000:])
        raise
    finally:
        worker.stop()
