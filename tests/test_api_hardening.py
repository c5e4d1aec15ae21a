"""/v1/ and the playground held like the pages: bodies capped before they are read, nesting capped as in imports,
uploads refused by their announced length and cut at the limit, downloads streamed, non-numbers refused, and the
candidates of an evaluation someone reviews blind not callable by them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.test import Client

from apps.api import services as api_services
from apps.api.selectors import run_model_id
from tests.api_setup import free_port
from tests.eval_setup import make_evaluation
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def key(team, settings):
    settings.FTSTUDIO_INFERENCE_URL = f"http://127.0.0.1:{free_port()}"  # nobody listens: a forwarded call is a 503
    return api_services.create_api_key(project=team.project, user=team.pm, name="pm")[1]


def call(path: str, key: str, body: bytes | str, **extra):
    return Client().post(path, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}", **extra)


def test_a_chat_body_over_the_cap_is_refused_before_it_is_read(key, settings):
    settings.FTSTUDIO_API_MAX_BODY_BYTES = 1000
    body = json.dumps({"model": "tiny-llama", "messages": [{"role": "user", "content": "x" * 2000}]})
    response = call("/v1/chat/completions", key, body)
    assert response.status_code == 413 and "at most 1,000" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/fine_tuning/jobs"])
def test_deeply_nested_json_is_a_json_400_with_the_imports_depth_cap(key, path):
    for depth in (40, 100_000):
        response = call(path, key, "[" * depth + "]" * depth)
        assert response.status_code == 400, (depth, response.content[:200])
        assert "nest at most 32 levels" in response.json()["error"]["message"]


def test_the_playground_refuses_max_tokens_that_are_not_numbers(team):
    client = team.client("pm")
    for raw in ("nan", "1e309", "-inf"):
        response = client.post(
            "/p/support/playground/stream/", {"candidate": "base:tiny-llama", "message": "Hi", "max_tokens": raw}
        )
        assert response.status_code == 400, raw
        assert response.json()["error"]["param"] == "max_tokens"


def test_an_upload_announced_over_the_limit_is_refused_unread(key, team, settings):
    settings.FTSTUDIO_MAX_UPLOAD_BYTES = 1000
    huge = str(settings.FTSTUDIO_MAX_UPLOAD_BYTES + 10**6)
    response = Client().post(
        "/v1/files",
        {"file": io.BytesIO(b"{}\n"), "purpose": "fine-tune"},
        HTTP_AUTHORIZATION=f"Bearer {key}",
        CONTENT_LENGTH=huge,
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large"
    page = team.client("pm").post("/p/support/data/import/", {"file": io.BytesIO(b"{}\n")}, CONTENT_LENGTH=huge)
    assert page.status_code == 413 and "limit" in page.content.decode()


def test_an_upload_stops_streaming_at_the_limit(key, team, settings, media_root):
    settings.FTSTUDIO_MAX_UPLOAD_BYTES = 1000  # the body (about 1.3 kB) passes the length check, the file does not
    data = b'{"messages": []}\n' * 70
    named = io.BytesIO(data)
    named.name = "train.jsonl"
    response = Client().post("/v1/files", {"file": named, "purpose": "fine-tune"}, HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large"
    assert not list(Path(media_root).rglob("*"))  # nothing was stored
    named.seek(0)
    page = team.client("pm").post("/p/support/data/import/", {"file": named, "file_format": "auto"})
    assert page.status_code == 200 and "The file is too large: the limit is 1,000 bytes." in page.content.decode()


def test_a_file_is_downloaded_as_a_stream(key, media_root):
    data = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n' * 50
    named = io.BytesIO(data)
    named.name = "train.jsonl"
    created = Client().post("/v1/files", {"file": named, "purpose": "fine-tune"}, HTTP_AUTHORIZATION=f"Bearer {key}")
    assert created.status_code == 200, created.content
    response = Client().get(f"/v1/files/{created.json()['id']}/content", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200 and response.streaming
    assert b"".join(response.streaming_content) == data


@pytest.fixture
def blind(team, settings, tiny_model_dir, tmp_path):
    """A ready evaluation whose run candidate has (placeholder) adapter files, and a second PM judging it blind."""
    evaluation, run = make_evaluation(team, settings, tiny_model_dir, tmp_path, fake=True)
    adapter = Path(run.adapter_path)
    adapter.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (adapter / name).write_text("{}")
    judge = MembershipFactory(project=team.project, role="pm", user=UserFactory(username="pm2")).user
    client = Client()
    client.force_login(judge)
    client.post(f"/p/support/evals/review/{evaluation.pk}/next/")  # takes a first pair: reviewing blind
    return run, judge, client


def test_the_candidates_of_a_blind_review_are_not_callable_by_the_reviewer(blind, team, settings):
    run, judge, client = blind
    settings.FTSTUDIO_INFERENCE_URL = f"http://127.0.0.1:{free_port()}"
    model = run_model_id(run)
    judge_key = api_services.create_api_key(project=team.project, user=judge, name="pm2")[1]
    body = json.dumps({"model": model, "messages": HI})
    refused = call("/v1/chat/completions", judge_key, body)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "blind_review"
    page = client.get("/p/support/playground/").content.decode()
    assert f"run:{model}" not in page
    streamed = client.post("/p/support/playground/stream/", {"candidate": f"run:{model}", "message": "Hi"})
    assert streamed.status_code == 403 and streamed.json()["error"]["code"] == "blind_review"
    # Whoever does not review it blind may call it (here: nobody listens, so the call reaches the 503).
    pm_key = api_services.create_api_key(project=team.project, user=team.pm, name="pm")[1]
    assert call("/v1/chat/completions", pm_key, body).status_code == 503
    assert f"run:{model}" in team.client("pm").get("/p/support/playground/").content.decode()
