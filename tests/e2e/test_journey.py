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

from apps.datasets.models import Example
from apps.demo import generator, services
from tests.e2e.conftest import login, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

DEMO_SIZE = 40  # clean examples: 32 train / 4 val / 4 test, so the run and the evaluation take seconds


def fixed_reply(example: Example) -> str:
    """The house-style reply a designer writes for a flagged example: greeting, the facts, sign-off."""
    fields = generator.parse_input(example.messages[0]["content"])
    return generator.format_reply(name=fields["customer"], answer=fields["facts"])


def designer_fixes_a_flagged_example_and_freezes_a_version(page, slug: str) -> None:
    page.goto(f"/p/{slug}/data/quality/")
    personal = page.locator("section", has=page.get_by_role("heading", name=re.compile("Personal data")))
    personal.wait_for()
    screenshot(page, "journey-1-quality-report")
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
    page.get_by_text(f"Froze v2: {DEMO_SIZE + 1} approved examples").wait_for()
    screenshot(page, "journey-3-version-frozen")


def test_the_demo_loop_from_a_flagged_example_to_a_verdict(new_page, tmp_path):
    seeded = services.seed_demo(size=DEMO_SIZE)
    slug = seeded.project.slug
    logins = seeded.logins

    designer = new_page()
    login(designer, "dana", logins["dana"])
    designer_fixes_a_flagged_example_and_freezes_a_version(designer, slug)
