"""A PM asks the tiny base model and a tuned run the same question in the playground and watches both answers
stream side by side (a real inference process behind the live server)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests import api_setup, runs_setup
from tests.api_setup import trained_run
from tests.e2e.conftest import login, screenshot
from tests.factories import conversation

inference = api_setup.inference
tiny_base_model = runs_setup.tiny_base_model

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Records every state a column passes through with how much text it had, so the test can tell the text
# arrived while the column was still streaming (not all at once at the end).
WATCH = """() => {
  window.seen = [];
  new MutationObserver(() => {
    for (const card of document.querySelectorAll('#answers .answer')) {
      window.seen.push([card.getAttribute('aria-label'), card.dataset.state,
                        card.querySelector('.answer-text').textContent.length]);
    }
  }).observe(document.getElementById('answers'), {subtree: true, childList: true, characterData: true, attributes:
  true});
}"""


def test_two_candidates_stream_side_by_side(
    new_page, password, team, tiny_base_model, inference, settings, live_server
):
    from apps.datasets.models import Example

    settings.FTSTUDIO_INFERENCE_URL = inference.url
    run = trained_run(team.project, tiny_base_model, team.pm, name="House style")
    Example.objects.create(
        project=team.project,
        split="test",
        status="approved",
        content_hash="x",
        messages=conversation("Hello, I'm Dee. Where is order #171?", "Hi Dee, ..."),
    )
    page = new_page()
    login(page, "pm", password)
    page.goto("/p/support/")
    page.get_by_role("link", name="Playground").first.click()
    page.get_by_label("Test example").select_option(
        label=f"#{Example.objects.get().pk}: Hello, I'm Dee. Where is order #171?"
    )
    # the deferred script fills the box (at once, or as soon as it runs if the pick came first): wait for it
    expect(page.get_by_label("Message")).to_have_value("Hello, I'm Dee. Where is order #171?")
    page.get_by_label("Tiny Llama (base)").check()
    page.get_by_label(f"House style (run #{run.pk})").check()
    page.locator("summary", has_text="Settings").click()
    page.get_by_label("Max tokens").fill("60")
    page.evaluate(WATCH)
    page.get_by_role("button", name="Send").click()

    base = page.get_by_role("region", name="Tiny Llama (base)")
    tuned = page.get_by_role("region", name=f"House style (run #{run.pk})")
    for column in (base, tuned):
        column.locator(".answer-status").filter(has_text="stopped at max tokens").or_(
            column.locator(".answer-status").filter(has_text="finished")
        ).wait_for(timeout=60_000)
        assert column.locator(".answer-text").text_content()
    left, right = base.bounding_box(), tuned.bounding_box()
    assert abs(left["y"] - right["y"]) < 2 and right["x"] >= left["x"] + left["width"]  # side by side
    seen = page.evaluate("window.seen")
    for label in ("Tiny Llama (base)", f"House style (run #{run.pk})"):
        assert any(name == label and state == "streaming" and length > 0 for name, state, length in seen), label
    screenshot(page, "playground")


def test_a_reviewer_has_no_playground(new_page, password, team, live_server):
    page = new_page()
    login(page, "reviewer", password)
    page.goto("/p/support/")
    assert page.get_by_role("link", name="Playground").count() == 0
    assert page.goto("/p/support/playground/").status == 403
