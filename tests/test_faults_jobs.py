"""Every background job kind has the lease and recovery of runs (apps/runs/jobs.py): automatic checks killed with
their worker (kill -9, a real Celery worker) are sent again by the reaper and finish; a killed export is sent again
by the reaper, or at once when someone asks for it again; a duplicate delivery of a held job does nothing."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.evaluations import automatic as eval_services_automatic
from apps.evaluations.models import AutoCheck, CheckResult, Generation
from apps.evaluations.tasks import reap as reap_evaluations
from apps.runs import jobs
from apps.runs.exports import request_export
from apps.runs.models import ExportStatus, JobLease, Run, RunExport, RunStatus
from apps.runs.tasks import reap
from tests import runs_setup
from tests.conftest import REPO
from tests.eval_setup import make_evaluation
from tests.export_setup import make_adapter
from tests.runs_setup import small_version

tiny_base_model = runs_setup.tiny_base_model
DEAD_OWNER = "node-that-died:4242:1:deadbeef"
STALE = 3


def checks_left(evaluation) -> int:
    """What the experiment page's "checking outputs" counts: outputs x checks not yet checked."""
    outputs = Generation.objects.filter(candidate__evaluation=evaluation).count()
    checks = AutoCheck.objects.filter(criterion__rubric=evaluation.rubric_id).count()
    return outputs * checks - CheckResult.objects.filter(generation__candidate__evaluation=evaluation).count()


@pytest.mark.django_db(transaction=True)
def test_checks_killed_with_their_worker_are_sent_again_by_the_reaper_and_finish(
    team, settings, tiny_model_dir, tmp_path
):
    from ftstudio.celery import app
    from tests.worker_process import running_worker, wait_for

    settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS = STALE
    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, fake=True)
    AutoCheck.objects.create(criterion=evaluation.rubric.criteria.first(), kind="max_words", number=1000)
    env = {
        "FTSTUDIO_HEARTBEAT_STALE_SECONDS": str(STALE),
        "FTSTUDIO_HEARTBEAT_SECONDS": "0.5",
        "FTSTUDIO_FAULT_CHECK_SECONDS": "2",  # 9 outputs: ~18 s of checks, killed after the first few
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "faults"), os.environ.get("PYTHONPATH", str(REPO))]),
    }
    with running_worker(tmp_path / "worker", queues="default", extra_env=env) as worker:
        eval_services_automatic.schedule_checks(evaluation.pk)
        wait_for(lambda: JobLease.objects.filter(kind="checks", state="running").exists(), 60, worker, "checks")
        time.sleep(1)
        worker.kill()
    lease = JobLease.objects.get(kind="checks", object_pk=evaluation.pk)
    assert lease.state == "running" and checks_left(evaluation) == 9  # stuck: "checking outputs"

    app.conf.CELERY_TASK_ALWAYS_EAGER = True  # what the reaper sends runs here (the next worker)
    try:
        time.sleep(max(0.0, STALE + 0.5 - (timezone.now() - lease.heartbeat_at).total_seconds()))
        assert reap_evaluations()["checks_jobs"] == [evaluation.pk]  # sent again, and run to the end
    finally:
        app.conf.CELERY_TASK_ALWAYS_EAGER = False
    assert checks_left(evaluation) == 0
    assert not JobLease.objects.filter(kind="checks").exists()  # the finished job leaves no lease behind


@pytest.fixture
def stuck_export(team, tiny_base_model, tiny_model_dir, tmp_path):
    """An export whose worker was killed: running, its lease held by a gone worker with a stale heartbeat."""
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    run = Run.objects.create(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=tiny_base_model,
        status=RunStatus.SUCCEEDED,
        adapter_path=str(adapter),
    )
    export = RunExport.objects.create(run=run, format="adapter", status=ExportStatus.RUNNING, started_at=timezone.now())
    JobLease.objects.create(
        kind="export",
        object_pk=export.pk,
        state="running",
        worker_id=DEAD_OWNER,
        attempts=1,
        heartbeat_at=timezone.now() - timedelta(hours=1),
    )
    return export


@pytest.mark.django_db
def test_a_killed_export_is_sent_again_by_the_reaper(stuck_export, eager, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        assert reap()["export_jobs"] == [stuck_export.pk]
    stuck_export.refresh_from_db()
    assert stuck_export.status == ExportStatus.SUCCEEDED and stuck_export.file_path
    assert not JobLease.objects.exists()


@pytest.mark.django_db
def test_asking_again_for_a_killed_export_sends_it_again(stuck_export, eager, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        again = request_export(run=stuck_export.run, fmt="adapter")
    assert again.pk == stuck_export.pk
    again.refresh_from_db()
    assert again.status == ExportStatus.SUCCEEDED


@pytest.mark.django_db
def test_an_export_given_up_after_the_attempt_limit_is_failed_with_a_reason(stuck_export):
    JobLease.objects.filter(kind="export").update(attempts=jobs.MAX_ATTEMPTS)
    reap()
    stuck_export.refresh_from_db()
    assert stuck_export.status == ExportStatus.FAILED and "stopped 3 times" in stuck_export.error


@pytest.mark.django_db
def test_a_duplicate_delivery_of_a_held_job_does_nothing_and_a_message_sent_meanwhile_runs_after(
    team, django_capture_on_commit_callbacks, monkeypatch
):
    sent = []
    monkeypatch.setattr(jobs, "send_after_commit", lambda task, pk: sent.append((task.name, pk)))
    with jobs.held("judge", 7) as lease:
        assert lease is not None
        with jobs.held("judge", 7) as second:
            assert second is None  # a live holder: the duplicate delivery is ignored
        jobs.send("judge", jobs.app.tasks["evaluations.run_judge"], 7)  # asked again while it runs
    assert sent == [("evaluations.run_judge", 7), ("evaluations.run_judge", 7)]  # sent, then once more after
    assert JobLease.objects.get(kind="judge", object_pk=7).state == "queued"


@pytest.mark.django_db
def test_an_import_whose_worker_died_is_sent_again_and_given_up_after_the_attempt_limit(
    team, settings, eager, django_capture_on_commit_callbacks
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from apps.datasets import importing as datasets_importing
    from apps.datasets.models import Example, ImportJob

    data = (REPO / "tests" / "fixtures" / "imports" / "valid_openai.jsonl").read_bytes()
    stuck, hopeless = (
        datasets_importing.start_import_job(project=team.project, upload=SimpleUploadedFile(f"{n}.jsonl", data))
        for n in "ab"
    )
    silent_since = timezone.now() - timedelta(seconds=settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS + 60)
    ImportJob.objects.filter(pk=stuck.pk).update(status="running", progress=40, heartbeat_at=silent_since, attempts=1)
    ImportJob.objects.filter(pk=hopeless.pk).update(status="running", heartbeat_at=silent_since, attempts=3)
    with django_capture_on_commit_callbacks(execute=True):
        assert reap()["queued_imports"] == [stuck.pk]
    stuck.refresh_from_db()
    hopeless.refresh_from_db()
    assert stuck.status == "done" and stuck.imported == Example.objects.count() > 0
    assert hopeless.status == "failed" and "stopped 3 times" in hopeless.stage
