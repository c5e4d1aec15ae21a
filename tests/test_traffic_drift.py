"""Drift: a week of questions from a new product line crosses the project's threshold and marks the run "not
evaluated on current traffic" where runs are listed; a week of re-sampled training questions does not."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.api import services as api_services
from apps.api.models import StoredCompletion
from apps.api.selectors import run_model_id
from apps.runs.models import BaseModel, Run, RunStatus
from apps.traffic import selectors, services
from tests.factories import conversation, make_dataset_version

pytestmark = pytest.mark.django_db

ITEMS = ["running shoes", "hiking boots", "sandals", "winter boots", "trail shoes", "slippers", "loafers", "sneakers"]
PANELS = ["rooftop solar panel kit", "balcony solar module", "home battery pack", "solar inverter", "charge controller"]


def order_question(rng) -> str:
    return (
        f"Where is my order of {rng.choice(ITEMS)} number {rng.randrange(100, 999)}? "
        f"It was due on {rng.choice(['Monday', 'Tuesday', 'Friday'])} and the tracking page shows nothing."
    )


def solar_question(rng) -> str:
    return (
        f"How do I mount the {rng.choice(PANELS)} on a {rng.choice(['flat', 'tiled', 'metal'])} roof with "
        f"{rng.randrange(2, 12)} brackets, and does the warranty cover installation by myself?"
    )


def store(project, run, questions, when):
    for i, question in enumerate(questions):
        row = api_services.save_stored_completion(
            project_id=project.pk,
            key_id=None,
            metadata={},
            stored_by="project",
            request={"messages": [{"role": "user", "content": question}]},
            completion={"id": f"chatcmpl-{run.pk}-{when:%j}-{i}", "model": run_model_id(run), "choices": []},
            streamed=False,
        )
        StoredCompletion.objects.filter(pk=row.pk).update(created_at=when)


@pytest.fixture
def served(team):
    rng = random.Random(7)
    training = [order_question(rng) for _ in range(60)]
    version = make_dataset_version(team.project, {"train": [conversation(q, "Let me check.") for q in training]})
    base = BaseModel.objects.create(name="tiny-llama", source_kind="local", source="/nowhere")
    runs = [
        Run.objects.create(
            project=team.project, name=name, dataset_version=version, base_model=base, status=RunStatus.SUCCEEDED
        )
        for name in ("shifted", "steady")
    ]
    now = timezone.now()
    for run in runs:
        store(team.project, run, rng.sample(training, 20), now - timedelta(days=14))  # old questions, re-sampled
    store(team.project, runs[0], [solar_question(rng) for _ in range(14)] + rng.sample(training, 6), now)
    store(team.project, runs[1], rng.sample(training, 20), now)
    return runs


def test_a_new_product_line_crosses_the_threshold_and_marks_the_run_where_runs_are_listed(team, served):
    shifted, steady = served
    services.measure_drift(project=team.project)
    lines = {line.run.pk: line for line in selectors.drift_lines(team.project)}
    assert [(w.inputs, w.unmatched) for w in lines[steady.pk].weeks] == [(20, 0), (20, 0)]
    old_week, new_week = lines[shifted.pk].weeks
    assert (old_week.inputs, old_week.unmatched) == (20, 0) and (new_week.inputs, new_week.unmatched) == (20, 14)
    assert selectors.drifted_runs(team.project) == {shifted.pk: lines[shifted.pk].drifted}
    assert "70%" in lines[shifted.pk].drifted

    for url in (reverse("run_list", kwargs={"slug": "support"}), reverse("freshness", kwargs={"slug": "support"})):
        page = team.client("pm").get(url).content.decode()
        assert page.count("not evaluated on current traffic") == 1, url
    traffic = team.client("designer").get(reverse("traffic", kwargs={"slug": "support"})).content.decode()
    assert "70%" in traffic and "not evaluated on current traffic" in traffic


def test_a_higher_project_threshold_marks_nothing_and_remeasuring_replaces_the_weeks(team, served):
    api_services.set_completion_storage(
        project=team.project, store_every_completion=False, retention_days=30, drift_threshold=0.8
    )
    services.measure_drift(project=team.project)
    services.measure_drift(project=team.project)  # idempotent: the same weeks, replaced
    assert selectors.drifted_runs(team.project) == {}
    assert sum(len(line.weeks) for line in selectors.drift_lines(team.project)) == 4


def test_the_project_home_draws_each_served_run_s_weekly_drift_against_the_threshold(team, served):
    import re
    from urllib.parse import quote

    shifted, steady = served
    home = reverse("project_detail", kwargs={"slug": "support"})
    assert 'id="drift-chart"' not in team.client("pm").get(home).content.decode()  # nothing measured yet
    services.measure_drift(project=team.project)
    page = team.client("pm").get(home).content.decode()
    chart = page[page.index('id="drift-chart"') :]
    assert chart.count("<svg") == 2 and chart.count('class="drift-bar"') == 4  # two runs, two weeks each
    shifted_chart = chart[chart.index(shifted.name) : chart.index(steady.name)]
    assert "not evaluated on current traffic" in shifted_chart
    heights = [float(h) for h in re.findall(r'class="drift-bar"[^>]* height="([\d.]+)"', shifted_chart)]
    assert heights == [0.0, 63.0]  # 0% then 70% of the chart's 90 points
    assert re.search(r'<line [^>]*y1="63.0"', shifted_chart)  # the 30% threshold, drawn at 70% of the height
    assert ": 70%" in shifted_chart and "not evaluated on current traffic" not in chart[chart.index(steady.name) :]
    review = f"/p/support/traffic/?model={quote(run_model_id(shifted))}#traffic-review"  # the action next to it
    assert review in shifted_chart and "#traffic-review" not in chart[chart.index(steady.name) :]
    assert 'id="drift-chart"' not in team.client("reviewer").get(home).content.decode()  # reviewers see no traffic
