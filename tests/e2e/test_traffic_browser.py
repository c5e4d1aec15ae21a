"""A designer in a real browser: filters the traffic, sends three rows to drafts, edits one; they show their source."""

import pytest

from apps.api.services import save_stored_completion
from apps.datasets.models import Example
from apps.runs.models import BaseModel
from tests.e2e.conftest import login, screenshot
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def tokenizer(settings, tiny_model_dir):
    settings.FTSTUDIO_TOKENIZER_DIR = str(tiny_model_dir)


def test_designer_filters_traffic_sends_three_rows_to_drafts_and_edits_one(new_page, password):
    project = ProjectFactory(name="Support replies", slug="support")
    MembershipFactory(project=project, user=UserFactory(username="dana"), role="designer")
    for name in ("tiny-llama", "other-model"):  # the model filter offers the models the project's keys may call
        BaseModel.objects.create(name=name, source_kind="local", source="/nowhere")
    for i, model in enumerate(["tiny-llama"] * 4 + ["other-model"]):
        save_stored_completion(
            project_id=project.pk,
            key_id=None,
            metadata={"shop": "eu"},
            stored_by="request",
            request={"messages": [{"role": "user", "content": f"Where is order {100 + i}?"}]},
            completion={
                "id": f"chatcmpl-{i}",
                "model": model,
                "created": 1,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Order {100 + i} ships."}}],
            },
            streamed=False,
        )

    page = new_page()
    login(page, "dana", password)
    page.goto("/p/support/")
    page.get_by_label("Serve").get_by_role("link", name="Traffic").click()
    page.get_by_label("Model", exact=True).select_option("other-model")
    page.locator("#row-chatcmpl-3").wait_for(state="detached")  # filtered in place
    assert page.locator("#traffic-rows tbody tr").count() == 1
    page.get_by_label("Model", exact=True).select_option("tiny-llama")
    page.locator("#row-chatcmpl-3").wait_for()
    for i in range(3):
        page.get_by_label(f"Send chatcmpl-{i}").check()
    page.get_by_role("button", name="Send ticked rows to drafts").click()
    page.get_by_text("3 rows are now draft examples").wait_for()
    screenshot(page, "traffic-sent")

    page.goto("/p/support/data/")
    assert page.locator(".origin").count() == 3
    first = Example.objects.get(origin="served answer chatcmpl-0 of tiny-llama")
    with page.expect_navigation():
        page.get_by_role("link", name=f"#{first.pk}").click()
    page.get_by_text("from served answer chatcmpl-0 of tiny-llama").wait_for()
    page.keyboard.press("e")
    page.get_by_role("textbox", name="Ideal response").fill("Hi, order 100 ships today.")
    page.get_by_text("Saved · revision 2").wait_for()
    first.refresh_from_db()
    assert first.ideal_output == "Hi, order 100 ships today." and first.status == "draft"
    assert first.origin == "served answer chatcmpl-0 of tiny-llama"
