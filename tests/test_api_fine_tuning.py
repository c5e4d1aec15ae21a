"""OpenAI's fine-tuning API (/v1/files, /v1/fine_tuning/jobs) driven by the official openai package against a live
server; the end-to-end test trains with a real worker and answers through the real inference process."""

from __future__ import annotations

import io
import json
import os
import time

import openai
import pytest
from django.urls import reverse

from apps.api import services as api_services
from apps.api.models import FineTuningJob
from apps.datasets.models import DatasetVersion, Example
from apps.runs import launching
from apps.runs.models import Run, RunStatus
from tests import api_setup, runs_setup
from tests.conftest import REPO
from tests.runs_setup import support_conversations

inference = api_setup.inference
tiny_base_model = runs_setup.tiny_base_model

pytestmark = pytest.mark.django_db(transaction=True)


def jsonl(conversations) -> bytes:
    return "".join(json.dumps({"messages": c}) + "\n" for c in conversations).encode()


@pytest.fixture
def api(settings, live_server, team, tiny_base_model):
    def client(role: str = "pm", other_project: bool = False) -> openai.OpenAI:
        project, user = (team.other_project, team.outsider) if other_project else (team.project, team.user(role))
        key = api_services.create_api_key(project=project, user=user, name=role)[1]
        return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0, timeout=120)

    return client


def upload(client, conversations=None, name="train.jsonl", raw: bytes | None = None):
    return client.files.create(
        file=(name, io.BytesIO(raw if raw is not None else jsonl(conversations))), purpose="fine-tune"
    )


def create_job(client, training_file, suffix="api", **kwargs):
    return client.fine_tuning.jobs.create(model="tiny-llama", training_file=training_file, suffix=suffix, **kwargs)


def test_files_are_uploaded_listed_read_back_and_deleted_within_their_project(api, media_root):
    pm = api("pm")
    data = jsonl(support_conversations(3))
    made = upload(pm, raw=data)
    assert made.id.startswith("file-") and made.bytes == len(data) and made.purpose == "fine-tune"
    assert made.filename == "train.jsonl"
    assert [f.id for f in api("designer").files.list()] == [made.id]
    assert pm.files.retrieve(made.id).bytes == len(data)
    assert pm.files.content(made.id).read() == data
    assert len(list(media_root.glob("api-files/*/*"))) == 1  # kept under MEDIA_ROOT

    with pytest.raises(openai.PermissionDeniedError):  # reviewers read, never add
        upload(api("reviewer"), support_conversations(1))
    with pytest.raises(openai.NotFoundError):  # another project's key does not see it
        api(other_project=True).files.retrieve(made.id)
    with pytest.raises(openai.BadRequestError) as purpose:
        pm.files.create(file=("x.jsonl", io.BytesIO(data)), purpose="assistants")
    assert purpose.value.body["param"] == "purpose"

    assert pm.files.delete(made.id).deleted is True
    assert not list(media_root.glob("api-files/*/*"))
    with pytest.raises(openai.NotFoundError):
        pm.files.retrieve(made.id)


def test_a_bad_line_fails_the_job_naming_the_line_and_imports_nothing(api, team):
    pm = api("pm")
    good = jsonl(support_conversations(4))
    bad = good + b'{"messages": [{"role": "user", "content": "hi"}]}\n' + jsonl(support_conversations(2, 10))
    training = upload(pm, raw=bad)
    validation = upload(pm, support_conversations(2, 50), name="val.jsonl")
    job = create_job(pm, training.id, validation_file=validation.id)
    assert job.status == "failed" and job.fine_tuned_model is None
    assert "line 5" in job.error.message and job.error.param == "training_file"
    assert pm.fine_tuning.jobs.retrieve(job.id).status == "failed"
    assert not Example.objects.filter(project=team.project).exists()  # not the validation file either
    assert not DatasetVersion.objects.exists() and not Run.objects.exists()
    events = pm.fine_tuning.jobs.list_events(job.id).data
    assert events[0].level == "error" and "line 5" in events[0].message  # newest first

    training = upload(pm, raw=good)  # the fixed file goes through: examples, a frozen version, a queued run
    job = create_job(pm, training.id, validation_file=validation.id)
    assert job.status == "queued" and job.error is None
    run = FineTuningJob.objects.get(public_id=job.id).run
    assert run.dataset_version.split_counts == {"train": 4, "val": 2, "test": 0}
    assert Example.objects.filter(project=team.project).count() == 6
    again = create_job(pm, upload(pm, raw=good).id, suffix="again")  # the same lines: deduplicated as on import
    assert again.status == "queued" and Example.objects.filter(project=team.project).count() == 6
    assert FineTuningJob.objects.get(public_id=again.id).files_report["training_file"]["already_in_project"] == 4


def test_a_large_file_is_validated_by_the_task_while_the_job_says_validating_files(api, team, settings):
    from apps.api.tasks import reap, validate_fine_tuning_job

    settings.FTSTUDIO_IMPORT_INLINE_BYTES = 10  # every file is "large" here
    pm = api("pm")
    job = create_job(pm, upload(pm, support_conversations(4)).id)
    assert job.status == "validating_files" and not Run.objects.exists() and not Example.objects.exists()
    assert pm.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
    pk = FineTuningJob.objects.get(public_id=job.id).pk
    settings.FTSTUDIO_REQUEUE_AFTER_SECONDS = 0  # the task's message was lost: the reaper sends it again, once
    assert reap()["validating_jobs"] == [pk]
    settings.FTSTUDIO_REQUEUE_AFTER_SECONDS = 600
    assert reap()["validating_jobs"] == []
    assert validate_fine_tuning_job.apply(args=[pk]).get() == "launched"
    assert validate_fine_tuning_job.apply(args=[pk]).get() == "launched"  # a second delivery changes nothing
    assert Run.objects.count() == 1 and Example.objects.count() == 4
    assert pm.fine_tuning.jobs.retrieve(job.id).status == "queued"

    bad = create_job(pm, upload(pm, raw=b'{"messages": []}\n').id, suffix="bad")
    assert validate_fine_tuning_job.apply(args=[FineTuningJob.objects.get(public_id=bad.id).pk]).get() == "failed"
    failed = pm.fine_tuning.jobs.retrieve(bad.id)
    assert failed.status == "failed" and "line 1" in failed.error.message and Run.objects.count() == 1


def test_each_error_class_comes_back_in_openai_s_shape(api, team):
    pm = api("pm")
    training = upload(pm, support_conversations(4))
    with pytest.raises(openai.BadRequestError) as unknown:
        create_job(pm, training.id, extra_body={"learning_rate": 0.1})
    assert unknown.value.body["param"] == "learning_rate" and "learning_rate" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as dpo:
        create_job(pm, training.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}})
    assert dpo.value.body["param"] == "method.dpo.hyperparameters.beta" and "at most 2" in dpo.value.message
    with pytest.raises(openai.BadRequestError) as kind:
        create_job(pm, training.id, method={"type": "ppo"})
    assert kind.value.body["param"] == "method.type" and "supervised, dpo, reinforcement" in kind.value.message
    with pytest.raises(openai.BadRequestError) as hp:
        create_job(pm, training.id, method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}})
    assert hp.value.body["param"] == "method.supervised.hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as hp:
        create_job(pm, training.id, hyperparameters={"warmup": 3})
    assert hp.value.body["param"] == "hyperparameters.warmup"
    with pytest.raises(openai.NotFoundError) as model:
        pm.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=training.id)
    assert model.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as missing:
        create_job(pm, "file-doesnotexist")
    assert missing.value.body["param"] == "training_file"
    other = api(other_project=True)
    elsewhere = upload(other, support_conversations(4))
    with pytest.raises(openai.NotFoundError):  # a file of another project
        create_job(pm, elsewhere.id)
    with pytest.raises(openai.NotFoundError):
        pm.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.PermissionDeniedError):  # designers may not start runs
        create_job(api("designer"), training.id)

    job = create_job(pm, training.id, extra_headers={"Idempotency-Key": "abc"})
    assert create_job(pm, training.id, extra_headers={"Idempotency-Key": "abc"}).id == job.id  # a retry
    with pytest.raises(openai.ConflictError):
        create_job(pm, training.id, suffix="other", extra_headers={"Idempotency-Key": "abc"})
    assert create_job(pm, training.id, suffix="no-key").id != create_job(pm, training.id, suffix="no-key").id
    assert Run.objects.count() == 3  # four creates: one job for the key sent twice, two for the same body sent twice

    cancelled = pm.fine_tuning.jobs.cancel(job.id)  # queued: cancelled at once
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.ConflictError) as finished:
        pm.fine_tuning.jobs.cancel(job.id)
    assert "cancelled" in finished.value.message
    with pytest.raises(openai.ConflictError):
        pm.fine_tuning.jobs.pause(job.id)


def test_pause_and_resume_of_a_queued_job_and_conflicts(api, team):
    pm = api("pm")
    job = create_job(pm, upload(pm, support_conversations(4)).id)
    with pytest.raises(openai.ConflictError) as not_paused:
        pm.fine_tuning.jobs.resume(job.id)
    assert "not paused" in not_paused.value.message
    assert pm.fine_tuning.jobs.pause(job.id).status == "paused"
    assert "paused" in pm.fine_tuning.jobs.list_events(job.id).data[0].message
    assert pm.fine_tuning.jobs.resume(job.id).status == "queued"
    run = Run.objects.get(fine_tuning_job__public_id=job.id)
    assert not run.pause_requested and "resumed" in run.log_tail
    assert pm.fine_tuning.jobs.pause(job.id).status == "paused"
    page = team.client("pm").get(run.get_absolute_url()).content.decode()  # the run page shows it and can resume it
    assert "Paused" in page and 'id="resume-run"' in page
    team.client("pm").post(reverse("run_resume", args=[team.project.slug, run.pk]))
    assert pm.fine_tuning.jobs.retrieve(job.id).status == "queued"
    assert pm.fine_tuning.jobs.pause(job.id).status == "paused"
    assert pm.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # a paused job can still be cancelled


def test_jobs_list_with_cursor_pagination_metadata_filter_and_browser_runs(api, team, tiny_base_model):
    pm = api("pm")
    training = upload(pm, support_conversations(4))
    made = [create_job(pm, training.id, suffix=f"j{i}", metadata={"team": "a" if i % 2 else "b"}) for i in range(5)]
    browser = launching.launch_run(
        project=team.project,
        dataset_version=runs_setup.small_version(team.project),
        base_model=tiny_base_model,
        overrides=runs_setup.FAST,
        user=team.pm,
        name="From the page",
    )
    first = pm.fine_tuning.jobs.list(limit=2)
    assert first.has_more and len(first.data) == 2
    assert first.data[0].user_provided_suffix == "From the page" and first.data[0].model == "tiny-llama"
    assert first.data[0].status == "queued" and first.data[0].training_file is None
    every = [j.id for j in pm.fine_tuning.jobs.list(limit=2)]  # the SDK follows the cursor page by page
    assert every[1:] == [j.id for j in reversed(made)] and len(set(every)) == 6
    assert FineTuningJob.objects.get(public_id=every[0]).run_id == browser.pk
    team_a = pm.fine_tuning.jobs.list(metadata={"team": "a"})
    assert [j.id for j in team_a.data] == [made[3].id, made[1].id] and not team_a.has_more
    assert api("reviewer").fine_tuning.jobs.retrieve(made[0].id).metadata == {"team": "b"}  # reading is for members


def test_reading_jobs_writes_nothing_and_the_api_pass_adopts_a_run_without_a_job(api, team, tiny_base_model):
    from apps.api.tasks import reap

    pm = api("pm")
    older = launching.launch_run(
        project=team.project,
        dataset_version=runs_setup.small_version(team.project),
        base_model=tiny_base_model,
        overrides=runs_setup.FAST,
        user=team.pm,
        name="Older",
    )
    assert FineTuningJob.objects.filter(run=older).exists()  # given its job once its launch committed
    FineTuningJob.objects.filter(run=older).delete()  # as a run from before jobs were made at launch
    assert pm.fine_tuning.jobs.list().data == []
    with pytest.raises(openai.NotFoundError):
        pm.fine_tuning.jobs.retrieve("ftjob-nothere")
    assert not FineTuningJob.objects.exists()  # reading wrote nothing
    assert reap()["adopted_runs"] == [older.pk]
    assert [j.user_provided_suffix for j in pm.fine_tuning.jobs.list().data] == ["Older"]
    assert reap()["adopted_runs"] == []


def wait_for(predicate, timeout: float, worker, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited while waiting for {what}:\n{worker.log()[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}:\n{worker.log()[-3000:]}")


def test_end_to_end_files_job_pause_resume_events_checkpoints_and_chat_with_the_tuned_model(
    api, team, settings, inference, tiny_model_dir, tmp_path
):
    """The OpenAI script, unchanged but for base_url and api_key: upload, fine-tune (paused and resumed midway by a
    real worker), follow the events until it succeeds, list the checkpoints and chat with the tuned model."""
    from standardwebhooks import Webhook

    from apps.webhooks import services as webhooks
    from tests.test_api_openai import HELLO, expected
    from tests.webhook_receiver import Receiver
    from tests.worker_process import running_worker

    settings.FTSTUDIO_INFERENCE_URL = inference.url
    settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on loopback
    receiver = Receiver([])
    secret = webhooks.create_endpoint(project=team.project, url=receiver.url, events=["fine_tuning.job.succeeded"])[1]
    client = api("pm")
    env = {
        "FTSTUDIO_MODEL_ROOTS": str(tiny_model_dir.parent),
        "FTSTUDIO_WEBHOOK_ALLOW_PRIVATE": "1",
        # a step of at least 0.5 s, so the pause is asked while the run is still training on an idle machine
        "FTSTUDIO_FAULT_TRAINING_STEP_SECONDS": "0.5",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "faults"), os.environ.get("PYTHONPATH", str(REPO))]),
    }
    with running_worker(tmp_path, queues="gpu,default", extra_env=env) as worker:
        training = upload(client, support_conversations(12))
        validation = upload(client, support_conversations(2, 50), name="val.jsonl")
        job = client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=training.id,
            validation_file=validation.id,
            suffix="support tone",
            seed=7,
            metadata={"ticket": "FT-1"},
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 5}},
            },
        )
        assert job.status == "queued" and job.hyperparameters.n_epochs == 2 and job.seed == 7
        run = Run.objects.get(fine_tuning_job__public_id=job.id)
        assert run.total_steps == 12 and run.hyperparameters["learning_rate"] == pytest.approx(0.005)

        wait_for(
            lambda: Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING, step__gte=2).exists(),
            180,
            worker,
            "two steps",
        )
        assert client.fine_tuning.jobs.pause(job.id).status == "running"  # stops at its next step end
        wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "paused", 120, worker, "the pause")
        run.refresh_from_db()
        paused_at = run.step
        assert 2 <= paused_at < 12 and run.checkpoint_path.endswith(f"checkpoint-{paused_at}") and run.attempts == 0
        time.sleep(1)
        assert Run.objects.get(pk=run.pk).step == paused_at  # nobody trains a paused run
        assert client.fine_tuning.jobs.resume(job.id).status == "queued"

        def finished():
            newest = client.fine_tuning.jobs.list_events(job.id, limit=5).data[0]
            return newest.message if newest.message.startswith(("The job has", "Fine-tuning job failed")) else None

        assert wait_for(finished, 180, worker, "the job to succeed") == "The job has successfully completed"
        wait_for(lambda: receiver.requests, 60, worker, "the worker's webhook delivery")
    receiver.close()
    headers, body = receiver.requests[0]
    event = Webhook(secret).verify(body, headers)
    assert (
        event["type"] == "fine_tuning.job.succeeded" and event["data"]["id"] == job.id and len(receiver.requests) == 1
    )

    job = client.fine_tuning.jobs.retrieve(job.id)
    run.refresh_from_db()
    assert job.status == "succeeded" and job.finished_at and job.trained_tokens > 0
    assert job.fine_tuned_model == f"ft:tiny-llama:support:support-tone:{run.pk}"
    steps = [
        e.data["step"]
        for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
        if e.type == "metrics" and "train_loss" in e.data
    ]
    assert sorted(steps) == list(range(1, 13))  # every step once: the pause lost nothing and repeated nothing
    assert any(e.message.startswith("Files validated") for e in client.fine_tuning.jobs.list_events(job.id, limit=100))
    csv_text = client.files.content(job.result_files[0]).text.splitlines()
    assert csv_text[0].startswith("step,train_loss,") and len(csv_text) == 13

    checkpoint, first_epoch = client.fine_tuning.jobs.checkpoints.list(job.id).data  # one for each of the 2 epochs
    assert checkpoint.fine_tuned_model_checkpoint == job.fine_tuned_model and checkpoint.step_number == 12
    assert first_epoch.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-6"
    assert checkpoint.metrics.valid_loss == pytest.approx(run.final_val_loss)

    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=HELLO, max_tokens=12, temperature=0)
    assert reply.model == job.fine_tuned_model
    assert reply.choices[0].message.content.strip() == expected(tiny_model_dir, run.adapter_path)
    page = team.client("pm").get(run.get_absolute_url()).content.decode()  # the studio sees the same run
    assert "Succeeded" in page and "support tone" in page
