"""Browser tests: Playwright for Python driving Debian's chromium against pytest-django's live server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import REPO

# Playwright's sync API runs an event loop in this thread; Django's guard would refuse ORM calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO / "var" / "screenshots"


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make test` installs it"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, live_server):
    """Open fresh browser contexts (one per user) on the live server; closed after the test."""
    contexts = []

    def open_page():
        context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def login(page, username: str, password: str) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/projects/")


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def judge_every_pair(page, side_key, on_pair=lambda page, judged: None, score="first", limit: int = 50) -> int:
    """The reviewer's loop on an opened review queue: press Start, then for each blind pair score every criterion
    (its first or last option), press the side key ``side_key(judged)`` gives ("a", "b" or "t"), submit with
    Ctrl+Enter; ``on_pair`` looks at each pair before it is judged. Returns how many pairs were judged."""
    with page.expect_navigation():  # waits for the pair page's load event: its shortcut script has run
        page.get_by_role("button", name="Start").click()
    judged = 0
    while page.get_by_role("heading", name="Which answer is better?").count():
        on_pair(page, judged)
        names = page.eval_on_selector_all('input[name^="score_"]', "els => [...new Set(els.map(e => e.name))]")
        for name in names:
            options = page.locator(f'input[name="{name}"]')
            (options.first if score == "first" else options.last).check()
        page.locator("body").press(side_key(judged))
        with page.expect_navigation():
            page.keyboard.press("Control+Enter")
        judged += 1
        assert judged < limit, "the queue never ends"
    page.get_by_text("Nothing left for you to review").wait_for()
    return judged
