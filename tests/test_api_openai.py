"""/v1/ driven by the official openai package against a live server and a real inference process."""

from __future__ import annotations

import time

import openai
import pytest

from apps.api import selectors as api_selectors
from apps.api import services as api_services
from apps.api.models import ApiKey
from tests import api_setup, runs_setup
from tests.api_setup import health, trained_run
from worker.generate import GenerationConfig, generate
from worker.models import load_generator

inference = api_setup.inference
tiny_base_model = runs_setup.tiny_base_model

pytestmark = pytest.mark.django_db(transaction=True)
HELLO = [{"role": "user", "content": "Hello, I'm Ann. Where is order #104?"}]


@pytest.fixture
def api(settings, live_server, inference, team, tiny_base_model):
    settings.FTSTUDIO_INFERENCE_URL = inference.url

    def client(role: str = "pm", key: str | None = None) -> openai.OpenAI:
        if key is None:
            key = api_services.create_api_key(project=team.project, user=team.user(role), name=role)[1]
        return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0, timeout=120)

    return client


def expected(model_dir, adapter=None, max_new_tokens=12) -> str:
    model, tokenizer = load_generator(str(model_dir), adapter_path=adapter)
    return generate(model, tokenizer, [HELLO], GenerationConfig(max_new_tokens=max_new_tokens))[0].text


def test_models_and_chat_with_the_base_model_and_a_tuned_run_streaming_and_not(
    api, team, tiny_base_model, tiny_model_dir
):
    run = trained_run(team.project, tiny_base_model, team.pm, name="Support tone v1")
    client = api("pm")
    run_id = f"ft:tiny-llama:support:support-tone-v1:{run.pk}"
    assert {"tiny-llama", run_id} <= {m.id for m in client.models.list()}
    assert client.models.retrieve(run_id).owned_by == "support"

    for model, adapter in (("tiny-llama", None), (run_id, run.adapter_path)):
        reply = client.chat.completions.create(model=model, messages=HELLO, max_tokens=12, temperature=0)
        choice = reply.choices[0]
        assert reply.model == model and choice.finish_reason in {"stop", "length"}
        assert choice.message.content.strip() == expected(tiny_model_dir, adapter)  # the engine's greedy output
        assert (
            reply.usage.completion_tokens > 0
            and reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        )

        chunks = list(
            client.chat.completions.create(
                model=model,
                messages=HELLO,
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == choice.message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
        assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    plain = list(
        client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=3, temperature=0, stream=True)
    )
    assert all(c.usage is None for c in plain)  # usage only when asked for
    key = ApiKey.objects.get(project=team.project, name="pm")
    assert key.requests == 7 and key.completion_tokens > 0 and key.last_used_at is not None


def test_n_choices_seeded_sampling_and_stop(api):
    client = api("designer")
    reply = client.chat.completions.create(
        model="tiny-llama", messages=HELLO, max_tokens=8, temperature=1.5, seed=5, n=2
    )
    again = client.chat.completions.create(
        model="tiny-llama", messages=HELLO, max_tokens=8, temperature=1.5, seed=5, n=2
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert [c.message.content for c in reply.choices] == [c.message.content for c in again.choices]
    full = (
        client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=12, temperature=0)
        .choices[0]
        .message.content
    )
    stop = full[4:6]
    cut = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == full[: full.index(stop)]


def test_every_error_class_comes_back_in_openai_s_shape(api, team, settings, tiny_base_model, live_server):
    pm = api("pm")
    with pytest.raises(openai.AuthenticationError):
        api("pm", key="fts_not-a-real-key").models.list()
    with pytest.raises(openai.PermissionDeniedError) as reviewer:
        api("reviewer").chat.completions.create(model="tiny-llama", messages=HELLO)
    assert "reviewer" in reviewer.value.message
    assert api("reviewer").models.list().data  # reviewers may still list models
    with pytest.raises(openai.NotFoundError) as unknown:
        pm.chat.completions.create(model="ft:tiny-llama:support:nope:999999", messages=HELLO)
    assert unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        pm.models.retrieve("no-such-model")
    with pytest.raises(openai.BadRequestError) as unsupported:
        pm.chat.completions.create(model="tiny-llama", messages=HELLO, logit_bias={"1": 5})
    assert unsupported.value.body["param"] == "logit_bias" and "logit_bias" in unsupported.value.message
    with pytest.raises(openai.BadRequestError) as injected:  # callers never choose what the inference process loads
        pm.chat.completions.create(model="tiny-llama", messages=HELLO, extra_body={"ftstudio": {"base": "/etc"}})
    assert injected.value.body["param"] == "ftstudio"
    with pytest.raises(openai.BadRequestError) as role:
        pm.chat.completions.create(model="tiny-llama", messages=[{"role": "critic", "content": "x"}])
    assert role.value.body["param"] == "messages[0].role"
    settings.FTSTUDIO_API_MAX_TOKENS = 64
    with pytest.raises(openai.BadRequestError) as cap:
        pm.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=65)
    assert cap.value.body["param"] == "max_tokens" and "64" in cap.value.message
    settings.FTSTUDIO_API_MAX_TOKENS = 1024
    with pytest.raises(openai.BadRequestError) as overflow:  # the tiny Llama's context is 512 tokens
        pm.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "order " * 600}], max_tokens=8
        )
    assert overflow.value.body["code"] == "context_length_exceeded" and "512" in overflow.value.message

    run = trained_run(team.project, tiny_base_model, team.pm)
    (__import__("pathlib").Path(run.adapter_path) / "adapter_model.safetensors").unlink()
    with pytest.raises(openai.NotFoundError) as missing:
        pm.chat.completions.create(model=api_selectors.run_model_id(run), messages=HELLO)
    assert "adapter_model.safetensors" in missing.value.message

    settings.FTSTUDIO_API_MAX_CONCURRENT_PER_KEY = 1
    stream = pm.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=400, temperature=0, stream=True)
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as busy:
        pm.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=4)
    assert "limit is 1" in busy.value.message
    stream.close()

    settings.FTSTUDIO_INFERENCE_URL = f"http://127.0.0.1:{api_setup.free_port()}"
    with pytest.raises(openai.InternalServerError) as down:
        pm.chat.completions.create(model="tiny-llama", messages=HELLO)
    assert down.value.status_code == 503 and "inference" in down.value.message


def test_a_client_that_disconnects_mid_stream_frees_its_row(api, inference):
    before = health(inference.url)["cancelled"]
    stream = api("pm").chat.completions.create(
        model="tiny-llama", messages=HELLO, max_tokens=450, temperature=0, stream=True
    )
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    stream.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = health(inference.url)
        if state["running"] == 0 and state["cancelled"] > before:
            break
        time.sleep(0.2)
    assert state["running"] == 0 and state["cancelled"] == before + 1, state


def test_a_revoked_key_stops_working_at_once(api, team):
    key, raw = api_services.create_api_key(project=team.project, user=team.pm, name="widget")
    client = api(key=raw)
    assert client.models.list().data
    page = team.client("pm").post(f"/p/{team.project.slug}/settings/", {"revoke_key": key.pk}, follow=True)
    assert "Revoked widget" in page.content.decode()
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_key_of_a_user_who_left_the_project_gets_403(api, team):
    client = api("designer")
    team.project.memberships.filter(user=team.designer).delete()
    with pytest.raises(openai.PermissionDeniedError):
        client.models.list()


def test_chat_answers_while_a_training_run_occupies_the_worker(api, team, tiny_base_model, tiny_model_dir, tmp_path):
    from apps.runs import launching
    from apps.runs.models import Run, RunStatus
    from tests.runs_setup import small_version
    from tests.worker_process import running_worker

    env = {"FTSTUDIO_MODEL_ROOTS": str(tiny_model_dir.parent)}
    with running_worker(tmp_path, queues="gpu,default", extra_env=env):
        run = launching.launch_run(
            project=team.project,
            dataset_version=small_version(team.project),
            base_model=tiny_base_model,
            overrides={"max_steps": 400, "batch_size": 2, "save_steps": 400, "max_seq_length": 128},
        )
        deadline = time.monotonic() + 120
        while not Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING, step__gte=1).exists():
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.3)
        reply = api("pm").chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=8, temperature=0)
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
        assert Run.objects.get(pk=run.pk).status == RunStatus.RUNNING  # the worker was busy training all along
        launching.cancel_run(run=Run.objects.get(pk=run.pk))


@pytest.mark.slow
def test_the_shipped_model_answers_through_the_api_as_the_engine_does_in_process(api, shipped_model_dir):
    from apps.runs.base_models import ensure_shipped_base_model

    name = ensure_shipped_base_model().name
    reply = api("pm").chat.completions.create(model=name, messages=HELLO, max_tokens=24, temperature=0)
    text = reply.choices[0].message.content
    assert len(text.split()) >= 3  # a real instruction-tuned model writes words
    assert text.strip() == expected(shipped_model_dir, max_new_tokens=24)
