"""Pages speak the user's language: the shared template filters, durations and hyperparameters in words,
the launch estimate as a sentence, no server paths, forms that start from the obvious choice, empty states
that say what to do, and a next step per role on the project overview."""

from __future__ import annotations

import pytest
from django.template import Context, Template

from ftstudio.templatetags.studio import duration, status_badge


@pytest.mark.parametrize("seconds,words", [
    (0, "0 s"), (12, "12 s"), (59.6, "1 min"), (60, "1 min"), (200, "3 min 20 s"), (3599, "59 min 59 s"),
    (3600, "1 h"), (3900, "1 h 5 min"), (3929, "1 h 5 min"), (90061, "25 h 1 min"), ("42", "42 s"),
])
def test_duration_says_seconds_in_minutes_and_hours(seconds, words):
    assert duration(seconds) == words


@pytest.mark.parametrize("value", [None, "", "soon"])
def test_duration_of_nothing_is_empty(value):
    assert duration(value) == ""


@pytest.mark.parametrize("status,css", [
    ("succeeded", "ok"), ("ready", "ok"), ("approved", "ok"), ("done", "ok"),
    ("failed", "bad"), ("cancelled", "bad"), ("rejected", "bad"), ("bad", "bad"),
    ("queued", "warn"), ("running", "warn"), ("generating", "warn"), ("warn", "warn"), ("draft", ""),
])
def test_status_badge_gives_one_colour_per_state_everywhere(status, css):
    assert status_badge(status) == css


def test_the_filters_load_in_any_template():
    html = Template('{% load studio %}<span class="badge {{ s|status_badge }}">{{ t|duration }}</span>').render(
        Context({"s": "failed", "t": 4182}))
    assert html == '<span class="badge bad">1 h 9 min</span>'


# --- htmx: a finished background job reloads the page with HX-Refresh, not an inline script --------------
def test_a_finished_quality_report_reloads_the_page_by_hx_refresh(team):
    from apps.datasets.models import QualityReport

    QualityReport.objects.create(project=team.project, status="done", progress=100)
    response = team.client("designer").get("/p/support/data/quality/?poll=1", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Refresh"] == "true"
    assert b"<script" not in response.content


def test_pages_with_keyboard_shortcuts_load_them_from_static_files(team):
    from apps.datasets.models import Example

    example = Example.objects.create(project=team.project, messages=[{"role": "user", "content": "Hi"},
                                                                       {"role": "assistant", "content": "Hello"}])
    html = team.client("designer").get(f"/p/support/data/examples/{example.pk}/").content.decode()
    assert 'src="/static/js/labelling.js"' in html
    assert "<script>" not in html and "addEventListener" not in html
