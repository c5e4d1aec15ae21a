"""The fine-tuning API as OpenAI defines it: every body checked against OpenAI's published schemas (pinned copy in
tests/fixtures), tool-call training files, whole n_epochs, one job per request, validation overlap kept, the last three
epochs' checkpoints servable, token accuracy, and 409s the SDK does not retry."""

from __future__ import annotations

import io
import json

import httpx
import openai
import pytest

from apps.api import selectors
from apps.api.models import FineTuningJob
from apps.runs.models import Run, RunStatus
from apps.runs.tasks import train_run
from tests import test_api_fine_tuning as api_tests
from tests.openai_schema import assert_openai_shape
from tests.runs_setup import support_conversations
from tests.test_api_fine_tuning import create_job, jsonl, upload

api, tiny_base_model, inference = api_tests.api, api_tests.tiny_base_model, api_tests.inference  # their fixtures

pytestmark = pytest.mark.django_db(transaction=True)

SUPERVISED = "method.supervised.hyperparameters"


def raw(response) -> dict:
    """The JSON body behind an SDK call made ``.with_raw_response``."""
    return json.loads(response.http_response.content)


def error_body(call) -> dict:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    body = caught.value.response.json()
    assert_openai_shape("ErrorResponse", body)
    return body["error"]


def test_files_jobs_events_checkpoints_models_and_errors_have_openai_s_shape(api):
    pm = api("pm")
    assert_openai_shape("ListFilesResponse", raw(pm.files.with_raw_response.list()))  # empty
    made = raw(
        pm.files.with_raw_response.create(
            file=("t.jsonl", io.BytesIO(jsonl(support_conversations(4)))), purpose="fine-tune"
        )
    )
    assert_openai_shape("OpenAIFile", made)
    assert_openai_shape("OpenAIFile", raw(pm.files.with_raw_response.retrieve(made["id"])))
    assert_openai_shape("ListFilesResponse", raw(pm.files.with_raw_response.list()))
    job = raw(pm.fine_tuning.jobs.with_raw_response.create(model="tiny-llama", training_file=made["id"], seed=3))
    assert_openai_shape("FineTuningJob", job)
    assert_openai_shape("FineTuningJob", raw(pm.fine_tuning.jobs.with_raw_response.retrieve(job["id"])))
    assert_openai_shape("ListPaginatedFineTuningJobsResponse", raw(pm.fine_tuning.jobs.with_raw_response.list()))
    events = raw(pm.fine_tuning.jobs.with_raw_response.list_events(job["id"]))
    assert_openai_shape("ListFineTuningJobEventsResponse", events)
    assert_openai_shape(
        "ListFineTuningJobCheckpointsResponse", raw(pm.fine_tuning.jobs.checkpoints.with_raw_response.list(job["id"]))
    )
    assert_openai_shape("ListModelsResponse", raw(pm.models.with_raw_response.list()))
    assert_openai_shape("Model", raw(pm.models.with_raw_response.retrieve("tiny-llama")))
    assert_openai_shape("FineTuningJob", raw(pm.fine_tuning.jobs.with_raw_response.cancel(job["id"])))
    # errors: 400, 404, 409, 403
    error_body(lambda: create_job(pm, made["id"], extra_body={"learning_rate": 0.1}))
    error_body(lambda: pm.fine_tuning.jobs.retrieve("ftjob-nope"))
    assert error_body(lambda: pm.fine_tuning.jobs.cancel(job["id"]))["code"] == "job_not_cancelled"
    error_body(lambda: create_job(api("designer"), made["id"]))
    assert_openai_shape("DeleteFileResponse", raw(pm.files.with_raw_response.delete(made["id"])))


def test_a_job_failed_by_a_bad_line_has_openai_s_shape(api):
    pm = api("pm")
    bad = upload(pm, raw=b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    body = raw(pm.fine_tuning.jobs.with_raw_response.create(model="tiny-llama", training_file=bad.id))
    assert_openai_shape("FineTuningJob", body)
    assert body["status"] == "failed" and body["error"]["param"] == "training_file"


@pytest.mark.parametrize("n_epochs", [1.5, 0, 51, "3", True])
def test_n_epochs_must_be_a_whole_number_from_1_to_50(api, n_epochs):
    pm = api("pm")
    training = upload(pm, support_conversations(4))
    hyperparameters = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": n_epochs}}}
    error = error_body(lambda: create_job(pm, training.id, method=hyperparameters))
    assert error["param"] == f"{SUPERVISED}.n_epochs" and "n_epochs" in error["message"]
    assert not FineTuningJob.objects.exists()


def test_a_whole_n_epochs_written_as_a_decimal_is_taken_as_that_integer(api):
    pm = api("pm")
    job = create_job(pm, upload(pm, support_conversations(4)).id, hyperparameters={"n_epochs": 2.0})
    body = raw(pm.fine_tuning.jobs.with_raw_response.retrieve(job.id))
    assert body["hyperparameters"]["n_epochs"] == 2 and isinstance(body["hyperparameters"]["n_epochs"], int)
    assert_openai_shape("FineTuningJob", body)


def test_two_identical_requests_make_two_jobs_and_an_idempotency_key_makes_one(api):
    pm = api("pm")
    training = upload(pm, support_conversations(4))
    assert create_job(pm, training.id).id != create_job(pm, training.id).id
    keyed = create_job(pm, training.id, extra_headers={"Idempotency-Key": "k1"})
    assert create_job(pm, training.id, extra_headers={"Idempotency-Key": "k1"}).id == keyed.id
    assert Run.objects.count() == 3


def test_a_409_says_do_not_retry_and_the_sdk_does_not_retry_it(api, live_server, team):
    from apps.api import services as api_services

    pm = api("pm")
    job = create_job(pm, upload(pm, support_conversations(4)).id)
    pm.fine_tuning.jobs.cancel(job.id)
    sent = []
    key = api_services.create_api_key(project=team.project, user=team.pm, name="retrying")[1]
    retrying = openai.OpenAI(
        base_url=f"{live_server.url}/v1",
        api_key=key,
        max_retries=3,
        http_client=httpx.Client(event_hooks={"request": [sent.append]}),
    )
    with pytest.raises(openai.ConflictError) as conflict:
        retrying.fine_tuning.jobs.cancel(job.id)
    assert conflict.value.response.headers["x-should-retry"] == "false"
    assert len(sent) == 1  # the SDK retries a 409 unless told not to


def test_validation_lines_that_are_also_training_lines_stay_in_validation_with_a_warning(api):
    pm = api("pm")
    training = upload(pm, support_conversations(6))
    validation = upload(pm, support_conversations(3, 4), name="val.jsonl")  # lines 5 and 6 of training, and one more
    job = create_job(pm, training.id, validation_file=validation.id)
    version = Run.objects.get(fine_tuning_job__public_id=job.id).dataset_version
    assert version.split_counts["train"] == 6 and version.split_counts["val"] == 3
    warning = [e for e in pm.fine_tuning.jobs.list_events(job.id).data if e.level == "warn"]
    assert len(warning) == 1 and warning[0].message.startswith("2 validation examples also appear in the training file")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def tool_line(i: int) -> dict:
    city = ["Paris", "Oslo", "Rome", "Lima", "Kyiv", "Doha"][i % 6]
    arguments = json.dumps({"city": city})
    return {
        "tools": [WEATHER],
        "messages": [
            {"role": "developer", "content": "Answer weather questions with the tool."},
            {"role": "user", "content": f"How warm is it in {city}?"},
            {"role": "assistant", "content": "One moment.", "weight": 0},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": f"call_{i}", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
                ],
            },
            {"role": "tool", "tool_call_id": f"call_{i}", "content": f"{10 + i}C"},
            {"role": "assistant", "content": f"It is {10 + i}C in {city}."},
        ],
    }


def test_a_tool_call_file_trains_end_to_end_with_three_servable_epoch_checkpoints(
    api, team, settings, inference, tiny_model_dir
):
    from tests.test_api_openai import HELLO, expected

    settings.FTSTUDIO_INFERENCE_URL = inference.url
    pm = api("pm")
    lines = "".join(json.dumps(tool_line(i)) + "\n" for i in range(6))
    training = upload(pm, raw=lines.encode())
    validation = upload(pm, raw="".join(json.dumps(tool_line(i)) + "\n" for i in (6, 7)).encode(), name="val.jsonl")
    job = create_job(
        pm,
        training.id,
        validation_file=validation.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 3}}},
    )
    run = Run.objects.get(fine_tuning_job__public_id=job.id)
    frozen = run.dataset_version.items.filter(split="train").first()
    assert frozen.tools == [WEATHER] and frozen.messages[3]["tool_calls"][0]["function"]["name"] == "get_weather"

    assert train_run(run.pk) == RunStatus.SUCCEEDED
    succeeded = raw(pm.fine_tuning.jobs.with_raw_response.retrieve(job.id))
    assert_openai_shape("FineTuningJob", succeeded)
    job = pm.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded" and succeeded["trained_tokens"] > 0
    body = raw(pm.fine_tuning.jobs.checkpoints.with_raw_response.list(job.id))
    assert_openai_shape("ListFineTuningJobCheckpointsResponse", body)
    steps = [c["step_number"] for c in body["data"]]
    assert steps == [8, 6, 4]  # 2 steps an epoch: the ends of epochs 4, 3 and 2, newest first
    final, *earlier = body["data"]
    assert final["fine_tuned_model_checkpoint"] == job.fine_tuned_model
    assert [c["fine_tuned_model_checkpoint"] for c in earlier] == [
        f"{job.fine_tuned_model}:ckpt-step-{s}" for s in (6, 4)
    ]
    for checkpoint in body["data"]:
        metrics = checkpoint["metrics"]
        assert set(metrics) >= {"train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"}
        assert 0 <= metrics["train_mean_token_accuracy"] <= 1 and 0 <= metrics["valid_mean_token_accuracy"] <= 1
        model = raw(pm.models.with_raw_response.retrieve(checkpoint["fine_tuned_model_checkpoint"]))
        assert_openai_shape("Model", model)
        target = selectors.resolve_model(team.project, checkpoint["fine_tuned_model_checkpoint"], servable=True)
        assert selectors.inference_target(target)["adapter"].endswith(
            "adapter" if checkpoint is final else f"epochs/step-{checkpoint['step_number']}"
        )
    second_epoch = earlier[-1]["fine_tuned_model_checkpoint"]  # an earlier epoch's adapter answers as itself
    reply = pm.chat.completions.create(model=second_epoch, messages=HELLO, max_tokens=12, temperature=0)
    assert reply.model == second_epoch
    adapter = selectors.inference_target(selectors.resolve_model(team.project, second_epoch))["adapter"]
    assert reply.choices[0].message.content.strip() == expected(tiny_model_dir, adapter)
    with pytest.raises(openai.NotFoundError):  # epoch 1 was not kept
        pm.models.retrieve(f"{job.fine_tuned_model}:ckpt-step-2")
    events = raw(pm.fine_tuning.jobs.with_raw_response.list_events(job.id, limit=100))
    assert_openai_shape("ListFineTuningJobEventsResponse", events)
    assert any("train_mean_token_accuracy" in (e.get("data") or {}) for e in events["data"])
    csv_rows = pm.files.content(job.result_files[0]).text.splitlines()
    assert csv_rows[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,learning_rate,epoch"
    assert csv_rows[1].split(",")[2] != ""  # token accuracy logged at every step
