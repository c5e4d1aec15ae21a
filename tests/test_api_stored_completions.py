"""Stored chat completions (store: true, metadata) driven by the official openai package against a live server
and a real inference process: list, retrieve, messages, update, delete, in OpenAI's shapes and scoped to a project."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone

from apps.api import services as api_services
from apps.api import stored
from apps.api.models import StoredCompletion
from tests import api_setup, runs_setup
from tests.openai_schema import assert_openai_shape

inference = api_setup.inference
tiny_base_model = runs_setup.tiny_base_model

pytestmark = pytest.mark.django_db(transaction=True)
HELLO = [{"role": "user", "content": "Where is order #104?"}]


@pytest.fixture
def api(settings, live_server, inference, team, tiny_base_model):
    settings.FTSTUDIO_INFERENCE_URL = inference.url

    def client(role: str = "pm", project=None) -> openai.OpenAI:
        key = api_services.create_api_key(project=project or team.project, user=team.user(role), name=role)[1]
        return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0, timeout=120)

    return client


def ask(client, **extra):
    return client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=4, temperature=0, **extra)


def test_store_list_retrieve_messages_update_delete_with_the_openai_package(api, live_server):
    pm = api("pm")
    kept = ask(pm, store=True, metadata={"topic": "orders", "shop": "eu"})
    ask(pm)  # not stored: no store flag, no project setting
    chunks = list(
        pm.chat.completions.create(
            model="tiny-llama",
            messages=HELLO,
            max_tokens=4,
            temperature=0,
            stream=True,
            store=True,
            metadata={"topic": "returns"},
        )
    )
    stored.writer.flush()
    assert StoredCompletion.objects.count() == 2

    listed = pm.chat.completions.list()
    assert [c.id for c in listed.data] == [kept.id, chunks[0].id]  # oldest first, as OpenAI's default order
    assert listed.data[0].choices[0].message.content == kept.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert listed.data[1].choices[0].message.content == streamed
    assert [c.id for c in pm.chat.completions.list(metadata={"topic": "orders"}).data] == [kept.id]
    assert pm.chat.completions.list(model="other-model").data == []
    page = pm.chat.completions.list(limit=1, order="desc")
    assert [c.id for c in page.data] == [chunks[0].id] and page.has_more
    assert [c.id for c in pm.chat.completions.list(limit=1, after=kept.id).data] == [chunks[0].id]
    assert [c.id for c in pm.chat.completions.list(limit=1)]  # the SDK pages on == [kept.id, chunks[0].id]

    raw = httpx.get(f"{live_server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {pm.api_key}"})
    assert_openai_shape("ChatCompletionList", raw.json())

    got = pm.chat.completions.retrieve(kept.id)
    assert got.id == kept.id and got.model == "tiny-llama" and got.usage.total_tokens == kept.usage.total_tokens
    assert got.metadata == {"topic": "orders", "shop": "eu"}
    messages = pm.chat.completions.messages.list(kept.id)
    assert [(m.role, m.content) for m in messages.data] == [("user", HELLO[0]["content"])]

    updated = pm.chat.completions.update(kept.id, metadata={"topic": "billing"})
    assert updated.metadata == {"topic": "billing"}
    assert pm.chat.completions.retrieve(kept.id).metadata == {"topic": "billing"}

    deleted = pm.chat.completions.delete(kept.id)
    assert deleted.deleted and deleted.id == kept.id
    raw = httpx.delete(
        f"{live_server.url}/v1/chat/completions/{chunks[0].id}", headers={"Authorization": f"Bearer {pm.api_key}"}
    )
    assert_openai_shape("ChatCompletionDeleted", raw.json())
    with pytest.raises(openai.NotFoundError):
        pm.chat.completions.retrieve(kept.id)
    assert pm.chat.completions.list().data == []


def test_metadata_over_openai_s_limits_is_a_400_and_nothing_is_stored(api):
    pm = api("pm")
    for metadata, words in (
        ({f"k{i}": "v" for i in range(17)}, "17 pairs"),
        ({"k" * 65: "v"}, "65 characters"),
        ({"k": "v" * 513}, "513 characters"),
    ):
        with pytest.raises(openai.BadRequestError) as bad:
            ask(pm, store=True, metadata=metadata)
        assert words in bad.value.message and bad.value.body["param"] == "metadata"
    ask(pm, store=True, metadata={"ok": "yes"})
    stored.writer.flush()
    (row,) = StoredCompletion.objects.all()
    with pytest.raises(openai.BadRequestError):
        pm.chat.completions.update(row.public_id, metadata={"k" * 65: "v"})
    with pytest.raises(openai.BadRequestError):
        pm.chat.completions.list(metadata={"k" * 65: "v"})


def test_another_project_s_completion_is_404_for_every_key_and_reviewers_see_no_traffic(api, team):
    pm = api("pm")
    kept = ask(pm, store=True)
    stored.writer.flush()
    outsider = api("outsider", project=team.other_project)
    for call in (
        lambda: outsider.chat.completions.retrieve(kept.id),
        lambda: outsider.chat.completions.messages.list(kept.id),
        lambda: outsider.chat.completions.update(kept.id, metadata={"a": "b"}),
        lambda: outsider.chat.completions.delete(kept.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert outsider.chat.completions.list().data == []
    reviewer = api("reviewer")
    with pytest.raises(openai.PermissionDeniedError):
        reviewer.chat.completions.list()
    with pytest.raises(openai.PermissionDeniedError):
        reviewer.chat.completions.retrieve(kept.id)
    assert StoredCompletion.objects.filter(public_id=kept.id).exists()


def test_the_project_setting_stores_every_completion_unless_the_request_says_store_false(api, team):
    api_services.set_completion_storage(project=team.project, store_every_completion=True, retention_days=30)
    designer = api("designer")
    every = ask(designer)
    ask(designer, store=False)
    stored.writer.flush()
    assert list(StoredCompletion.objects.values_list("public_id", "stored_by")) == [(every.id, "project")]


def test_a_full_queue_drops_and_counts_while_the_answer_still_comes_back(api, settings, monkeypatch):
    pm = api("pm")
    full = stored.Writer()
    monkeypatch.setattr(stored, "writer", full)
    monkeypatch.setattr(full, "_drain", lambda: None)  # a writer that never drains: the queue fills up
    settings.FTSTUDIO_STORE_QUEUE_SIZE = 1
    first = ask(pm, store=True)
    second = ask(pm, store=True)
    assert first.choices[0].message.content is not None and second.choices[0].message.content is not None
    assert full.queue.qsize() == 1 and full.dropped == 1


def test_retention_deletes_older_rows_of_that_project_only(team):
    api_services.set_completion_storage(project=team.project, store_every_completion=False, retention_days=7)
    api_services.set_completion_storage(project=team.other_project, store_every_completion=False, retention_days=0)

    def row(project, public_id, age_days):
        r = api_services.save_stored_completion(
            project_id=project.pk,
            key_id=None,
            metadata={},
            stored_by="request",
            request={"messages": HELLO},
            completion={"id": public_id, "model": "m", "choices": []},
            streamed=False,
        )
        StoredCompletion.objects.filter(pk=r.pk).update(created_at=timezone.now() - timedelta(days=age_days))

    row(team.project, "chatcmpl-old", 8)
    row(team.project, "chatcmpl-new", 6)
    row(team.other_project, "chatcmpl-forever", 400)
    from apps.api.tasks import delete_expired_completions

    assert delete_expired_completions() == 1
    assert set(StoredCompletion.objects.values_list("public_id", flat=True)) == {"chatcmpl-new", "chatcmpl-forever"}


def test_a_registered_model_teaches_through_the_inference_process(api, team):
    from apps.datasets.models import Example
    from apps.traffic.services import distill

    kept = ask(api("pm"), store=True)
    stored.writer.flush()
    assert distill(project=team.project, public_ids=[kept.id], teacher="tiny-llama") == {
        "answered": 1,
        "skipped": 0,
        "failed": 0,
    }
    (draft,) = Example.objects.filter(project=team.project)
    assert draft.origin == f"teacher tiny-llama on {kept.id}" and draft.status == "draft"
    assert draft.messages[0] == HELLO[0] and draft.ideal_output  # the teacher's answer is the starting ideal


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Oslo", "Paris"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_a_streamed_completion_is_stored_whole_with_its_usage_though_the_caller_did_not_ask_for_usage(api, live_server):
    pm = api("pm")
    chunks = list(
        pm.chat.completions.create(
            model="tiny-llama", messages=HELLO, max_tokens=5, temperature=0, stream=True, store=True
        )
    )
    assert all(c.usage is None for c in chunks)  # the caller did not ask for usage: it gets none in the stream
    plain = pm.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=5, temperature=0)
    # the same request unstreamed: the counts the stored row must hold
    called = list(
        pm.chat.completions.create(
            model="tiny-llama",
            messages=HELLO,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=40,
            temperature=0,
            stream=True,
            store=True,
        )
    )
    stored.writer.flush()

    text = pm.chat.completions.retrieve(chunks[0].id)
    assert text.choices[0].message.content == "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.usage.prompt_tokens == plain.usage.prompt_tokens > 0
    assert text.usage.completion_tokens == plain.usage.completion_tokens > 0
    assert text.usage.total_tokens == plain.usage.total_tokens

    raw = httpx.get(
        f"{live_server.url}/v1/chat/completions/{called[0].id}", headers={"Authorization": f"Bearer {pm.api_key}"}
    ).json()
    assert_openai_shape("CreateChatCompletionResponse", raw)
    (choice,) = raw["choices"]
    (call,) = choice["message"]["tool_calls"]
    streamed = [t for c in called if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert call["id"] == streamed[0].id and call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == "".join(t.function.arguments or "" for t in streamed)
    assert json.loads(call["function"]["arguments"])["city"] in {"Oslo", "Paris"}
    assert choice["finish_reason"] == "tool_calls" and raw["usage"]["completion_tokens"] > 0


def test_an_empty_list_is_a_valid_openai_list(api, live_server):
    pm = api("pm")
    raw = httpx.get(f"{live_server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {pm.api_key}"})
    assert raw.json()["data"] == [] and raw.json()["has_more"] is False
    assert_openai_shape("ChatCompletionList", raw.json())  # first_id and last_id are required strings
    assert pm.chat.completions.list().data == []


def test_the_project_s_storage_choice_is_read_once_not_per_request_and_a_change_applies_at_once(api, team, monkeypatch):
    from django.db.models.query import QuerySet

    from apps.api.models import CompletionStorage

    reads, exists = [], QuerySet.exists

    def counted(queryset):
        if queryset.model is CompletionStorage:
            reads.append(queryset)
        return exists(queryset)

    monkeypatch.setattr(QuerySet, "exists", counted)  # every thread's query, the live server's too
    designer = api("designer")
    for _ in range(3):
        ask(designer)
    assert len(reads) == 1  # the first request read it; the next two found it cached
    api_services.set_completion_storage(project=team.project, store_every_completion=True, retention_days=30)
    kept = ask(designer)
    stored.writer.flush()
    assert list(StoredCompletion.objects.values_list("public_id", flat=True)) == [kept.id]
    assert len(reads) == 2
