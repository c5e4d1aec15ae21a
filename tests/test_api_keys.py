"""API keys in project settings and from the command line: shown once, stored hashed, usage shown."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.api.models import ApiKey

pytestmark = pytest.mark.django_db


def test_a_pm_creates_a_key_sees_it_once_and_the_page_shows_its_use(team):
    pm = team.client("pm")
    response = pm.post("/p/support/settings/", {"create_key": "1", "name": "support widget"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"  # in this response, no redirect
    raw = re.search(r"(fts_[\w-]+)", response.content.decode()).group(1)
    assert not any(raw in morsel.value for morsel in response.cookies.values())  # not in the messages cookie
    key = ApiKey.objects.get(project=team.project)
    assert key.user == team.pm and key.name == "support widget"
    assert raw not in (key.hashed, key.prefix) and key.prefix == raw[:12]
    assert team.client("pm").get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200
    ApiKey.objects.filter(pk=key.pk).update(prompt_tokens=31, completion_tokens=12)
    again = pm.get("/p/support/settings/").content.decode()
    assert raw not in again  # never shown again
    assert "support widget" in again and "31 / 12" in again and "ago" in again


def test_designers_cannot_manage_keys(team):
    assert team.client("designer").post("/p/support/settings/", {"create_key": "1"}).status_code == 403
    assert not ApiKey.objects.exists()


def test_the_command_prints_a_working_key_once(team, client):
    out = StringIO()
    call_command(
        "create_api_key", "--project", "support", "--user", "designer", "--name", "ci", stdout=out, stderr=StringIO()
    )
    raw = out.getvalue().strip()
    models = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert models.status_code == 200 and models.json()["object"] == "list"
    with pytest.raises(CommandError, match="not a member"):
        call_command("create_api_key", "--project", "support", "--user", "outsider", stdout=StringIO())


def test_a_key_only_reaches_its_own_project(team, client):
    from apps.api.selectors import run_model_id
    from apps.api.services import create_api_key
    from apps.runs.models import BaseModel, Run, RunStatus
    from tests.runs_setup import small_version

    base = BaseModel.objects.create(name="some-base", source_kind="local", source="/nowhere")
    run = Run.objects.create(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=base,
        name="Secret tone",
        status=RunStatus.SUCCEEDED,
    )
    Run.objects.create(
        project=team.project, dataset_version=run.dataset_version, base_model=base, status=RunStatus.FAILED
    )
    own = create_api_key(project=team.project, user=team.reviewer)[1]
    listed = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {own}").json()["data"]
    assert [m["id"] for m in listed] == ["some-base", f"ft:some-base:support:secret-tone:{run.pk}"]  # no failed run

    other = create_api_key(project=team.other_project, user=team.outsider)[1]
    listed = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {other}").json()["data"]
    assert [m["id"] for m in listed] == ["some-base"]
    hidden = client.get(f"/v1/models/{run_model_id(run)}", HTTP_AUTHORIZATION=f"Bearer {other}")
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"
    bad = client.get("/v1/models", HTTP_AUTHORIZATION="Bearer nope")
    assert bad.status_code == 401 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
