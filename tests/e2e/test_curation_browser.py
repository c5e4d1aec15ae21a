"""A designer's curation journey in a real browser: import with a bad line, fix, label by keyboard, freeze."""

from pathlib import Path

import pytest

from apps.datasets.models import DatasetVersion, Example
from tests.e2e.conftest import login, screenshot
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "imports"


@pytest.fixture(autouse=True)
def tokenizer(settings, tiny_model_dir):
    settings.FTSTUDIO_TOKENIZER_DIR = str(tiny_model_dir)


def test_designer_fixes_a_bad_import_labels_by_keyboard_and_freezes_a_version(new_page, password):
    project = ProjectFactory(name="Support replies in house style", slug="support")
    MembershipFactory(project=project, user=UserFactory(username="dana"), role="designer")

    page = new_page()
    login(page, "dana", password)
    page.goto("/p/support/data/")
    page.get_by_role("link", name="Import", exact=True).click()
    page.get_by_label("File").set_input_files(str(FIXTURES / "one_bad_line.jsonl"))
    page.get_by_role("button", name="Import").click()
    page.get_by_text("Nothing was imported: 1 problem").wait_for()
    page.get_by_text("line 2: no assistant message").wait_for()
    screenshot(page, "curation-import-error")
    assert Example.objects.count() == 0

    page.get_by_label("File").set_input_files(str(FIXTURES / "one_bad_line_fixed.jsonl"))
    page.get_by_role("button", name="Import").click()
    page.get_by_role("heading", name="Imported 3 examples").wait_for()

    page.goto("/p/support/data/")
    with page.expect_navigation():  # waits for the page's load event: its shortcut script has run
        page.get_by_role("link", name="Start labelling").click()
    page.get_by_text("Keyboard shortcuts").wait_for()
    first = Example.objects.order_by("id").first()
    page.keyboard.press("e")
    editor = page.get_by_role("textbox", name="Ideal response")
    expect_focus = page.evaluate("document.activeElement.id")
    assert expect_focus == "ideal"
    editor.fill("Hi Sam, sorry it arrived broken: a replacement ships today. Best wishes, Support")
    page.get_by_text("Saved · revision 2").wait_for()  # autosaved, no button pressed
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    page.locator("#status-badge", has_text="Approved").wait_for()
    screenshot(page, "curation-labelling")
    first.refresh_from_db()
    assert first.ideal_output.startswith("Hi Sam, sorry it arrived broken") and first.status == "approved"
    assert first.revisions.count() == 2

    for _ in range(2):  # the rest of the queue, by keyboard only
        with page.expect_navigation():
            page.keyboard.press("j")
        page.get_by_text("Keyboard shortcuts").wait_for()
        page.keyboard.press("a")
        page.locator("#status-badge", has_text="Approved").wait_for()
    assert Example.objects.filter(status="approved").count() == 3

    page.goto("/p/support/data/versions/")
    page.get_by_role("button", name="Freeze version").click()
    page.get_by_text("approved examples have no split").wait_for()

    page.goto("/p/support/data/")
    page.get_by_text("Seeded, near-duplicates kept together").click()
    page.get_by_role("button", name="Assign splits").click()
    page.get_by_text("Splits assigned").wait_for()

    page.get_by_role("link", name="Versions").click()
    page.get_by_label("Note").fill("First house-style set")
    page.get_by_role("button", name="Freeze version").click()
    page.get_by_text("Froze v1: 3 approved examples").wait_for()
    screenshot(page, "curation-versions")
    version = DatasetVersion.objects.get(project=project)
    assert version.number == 1 and version.example_count == 3 and version.note == "First house-style set"
    assert any(
        conv[-1]["content"].startswith("Hi Sam, sorry it arrived broken")
        for split in ("train", "val", "test")
        for conv in version.conversations(split)
    )
