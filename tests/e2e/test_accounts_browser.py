import pytest

from tests.e2e.conftest import login, screenshot
from tests.factories import UserFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_new_user_creates_a_project_and_a_reviewer_cannot_reach_its_settings(new_page, password):
    UserFactory(username="dana")
    UserFactory(username="rui")

    page = new_page()
    login(page, "dana", password)
    page.get_by_role("link", name="New project").click()
    page.get_by_label("Name").fill("Support replies in house style")
    page.get_by_role("button", name="Create project").click()
    page.get_by_text("Created Support replies in house style").wait_for()
    page.get_by_role("link", name="Settings").click()
    invite = page.locator("#invite")
    invite.get_by_label("Role").select_option("reviewer")
    invite.get_by_role("button", name="Invite").click()
    link = page.locator("#shown-once code").inner_text()
    screenshot(page, "accounts-members")
    settings_url = page.url

    reviewer = new_page()
    login(reviewer, "rui", password)
    reviewer.goto(link)
    reviewer.get_by_role("button", name="Accept and join").click()
    reviewer.get_by_text("You joined Support replies in house style as Reviewer").wait_for()
    assert reviewer.get_by_role("link", name="Settings").count() == 0
    response = reviewer.goto(settings_url)
    assert response.status == 403
