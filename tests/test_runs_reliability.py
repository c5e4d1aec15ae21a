"""What survives which fault, in-process on the tiny model: a slow phase is not mistaken for a dead worker,
a worker that lost its claim stops writing, cancel while the model loads, a lost queued message, resume of a
failed run, a warm shutdown, the reaper alarm and a full or read-only disk.
(Faults with a real worker subprocess: tests/test_runs_worker_process.py.)"""

from __future__ import annotations

import errno
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.db.models.signals import post_save
from django.utils import timezone

from apps.api import tasks as api_tasks
from apps.evaluations import tasks as evaluations_tasks
from apps.prompts import tasks as prompts_tasks
from apps.runs import execution, launching, leases, recovery
from apps.runs.models import ReaperBeat, Run, RunMetric, RunStatus
from apps.runs.tasks import reap, train_run
from tests import runs_setup
from tests.factories import UserFactory
from tests.runs_setup import FAST, small_version

tiny_base_model = runs_setup.tiny_base_model

DEAD_OWNER = "node-that-died:4242:1:deadbeef"


def launch(team, tiny_base_model, **overrides):
    return launching.launch_run(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=tiny_base_model,
        overrides={**FAST, **overrides},
        user=team.pm,
    )


@pytest.fixture
def slow_model_load(monkeypatch):
    """Loading the weights takes `seconds`; `during` runs meanwhile (as another worker or the reaper would)."""
    import worker.models

    original = worker.models.load_model
    plan = {"seconds": 0.0, "during": lambda: None, "seen": None}

    def load_model(*args, **kwargs):
        deadline = timezone.now() + timedelta(seconds=plan["seconds"])
        while timezone.now() < deadline:
            pass  # busy, as a real load is: the GIL is released only between bytecodes
        plan["seen"] = plan["during"]()
        return original(*args, **kwargs)

    monkeypatch.setattr(worker.models, "load_model", load_model)
    return plan


@pytest.mark.django_db(transaction=True)
def test_a_model_load_longer_than_the_staleness_limit_is_not_taken_over(
    team, tiny_base_model, settings, slow_model_load
):
    """The issue's fault: loading took longer than the staleness limit and the reaper re-queued a live run."""
    settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS, settings.FTSTUDIO_HEARTBEAT_SECONDS = 2, 0.25
    run = launch(team, tiny_base_model)
    slow_model_load["seconds"] = 3.5
    slow_model_load["during"] = lambda: (
        recovery.reap_stale_runs(),
        execution.claim_run(run.pk, owner=DEAD_OWNER),
        Run.objects.get(pk=run.pk).heartbeat_at,
    )
    started = timezone.now()
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    requeued, second_claim, heartbeat = slow_model_load["seen"]
    assert requeued == [] and second_claim is None  # the reaper and a second delivery left it alone
    assert (heartbeat - started).total_seconds() > 2.5  # beaten while the main thread was busy loading
    run.refresh_from_db()
    assert run.attempts == 1 and run.step == 4 and run.worker_id.startswith(leases._HOST)


@pytest.mark.django_db
def test_a_worker_whose_run_was_taken_over_stops_writing(team, tiny_base_model):
    run = launch(team, tiny_base_model, max_steps=8)

    def take_over_after_step_2(sender, instance, created, **kwargs):
        if instance.train_loss is not None and instance.step == 2:  # as claim_run does for another worker
            Run.objects.filter(pk=instance.run_id).update(worker_id=DEAD_OWNER, attempts=2, log_tail="theirs")

    post_save.connect(take_over_after_step_2, sender=RunMetric, dispatch_uid="takeover-test")
    try:
        assert train_run(run.pk) == "lost"
    finally:
        post_save.disconnect(dispatch_uid="takeover-test", sender=RunMetric)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.worker_id == DEAD_OWNER and run.log_tail == "theirs"
    assert run.step <= 3 and run.adapter_path == ""  # stopped within a step, wrote no status, no adapter
    assert list(run.metrics.values_list("step", flat=True)) == [1, 2]
    checkpoints = execution.run_dir(run) / "checkpoints"
    assert not (execution.run_dir(run) / "adapter").exists()
    assert max(int(p.name.split("-")[1]) for p in checkpoints.iterdir()) <= 2


@pytest.mark.django_db
def test_cancel_while_the_model_loads_stops_before_the_first_step(team, tiny_base_model, slow_model_load):
    run = launch(team, tiny_base_model)
    slow_model_load["during"] = lambda: launching.cancel_run(run=run)
    assert train_run(run.pk) == RunStatus.CANCELLED
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.step == 0 and not run.metrics.exists()
    assert not (execution.run_dir(run) / "checkpoints").exists()


@pytest.mark.django_db
def test_a_queued_run_whose_message_was_lost_is_sent_again_and_a_recent_one_is_not(
    team, tiny_base_model, eager, settings, django_capture_on_commit_callbacks
):
    lost = launch(team, tiny_base_model)
    waiting = launch(team, tiny_base_model)
    Run.objects.filter(pk=lost.pk).update(
        enqueued_at=timezone.now() - timedelta(seconds=settings.FTSTUDIO_REQUEUE_AFTER_SECONDS + 60)
    )
    assert 'id="resume-run"' in team.client("pm").get(lost.get_absolute_url()).content.decode()  # stranded
    with django_capture_on_commit_callbacks(execute=True):  # the reaper sends once its transaction commits
        result = reap()
    assert result["queued_runs"] == [lost.pk]
    lost.refresh_from_db()
    waiting.refresh_from_db()
    assert lost.status == RunStatus.SUCCEEDED and lost.attempts == 1 and lost.step == 4
    assert waiting.status == RunStatus.QUEUED and waiting.attempts == 0


@pytest.mark.django_db
def test_a_pm_resumes_a_failed_run_from_its_last_checkpoint(
    team, tiny_base_model, eager, django_capture_on_commit_callbacks
):
    """The disk filled up after checkpoint-2: the run fails with a plain message; once space is freed the PM resumes
    it from the page and it finishes the same 4 steps."""
    run = launch(team, tiny_base_model)

    def fill_disk_at_step_3(sender, instance, created, **kwargs):
        if instance.train_loss is not None and instance.step == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(execution.run_dir(run) / "checkpoints"))

    post_save.connect(fill_disk_at_step_3, sender=RunMetric, dispatch_uid="disk-full")
    try:
        assert train_run(run.pk) == RunStatus.FAILED
    finally:
        post_save.disconnect(dispatch_uid="disk-full", sender=RunMetric)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and run.error.startswith("Storage error: the disk is full")
    assert "Traceback" not in run.error
    page = team.client("pm").get(run.get_absolute_url()).content.decode()
    assert "the disk is full" in page and 'id="resume-run"' in page
    assert 'id="resume-run"' not in team.client("reviewer").get(run.get_absolute_url()).content.decode()
    assert team.client("reviewer").post(f"/p/support/runs/{run.pk}/resume/").status_code == 403

    with django_capture_on_commit_callbacks(execute=True):
        response = team.client("pm").post(f"/p/support/runs/{run.pk}/resume/", follow=True)
    assert "resumes from its last checkpoint" in response.content.decode()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.step == run.total_steps == 4 and run.error == ""
    assert "resume requested by pm" in run.log_tail and "resuming from" in run.log_tail
    assert "checkpoint-2" in run.log_tail
    assert list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True)) == [1, 2, 3, 4]


@pytest.mark.django_db
def test_resume_is_refused_while_a_live_worker_holds_the_run_and_for_a_finished_run(team, tiny_base_model):
    run = launch(team, tiny_base_model)
    with pytest.raises(launching.RunError, match="waiting for a worker"):  # just queued: not stranded
        launching.resume_run(run=run)
    assert 'id="resume-run"' not in team.client("pm").get(run.get_absolute_url()).content.decode()
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, worker_id=DEAD_OWNER, heartbeat_at=timezone.now())
    run.refresh_from_db()
    with pytest.raises(launching.RunError, match="live worker"):
        launching.resume_run(run=run)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED)
    run.refresh_from_db()
    with pytest.raises(launching.RunError, match="only failed or stranded"):
        launching.resume_run(run=run)
    response = team.client("pm").post(f"/p/support/runs/{run.pk}/resume/", follow=True)
    assert "only failed or stranded runs can be resumed" in response.content.decode()


@pytest.mark.django_db
def test_a_warm_shutdown_stops_at_a_checkpoint_and_costs_no_attempt(team, tiny_base_model):
    """SIGTERM to the worker (Celery's worker_shutting_down signal): the run stops at the end of the step with a
    checkpoint of that step, goes back to the queue with its attempt given back, and the next delivery finishes it."""
    from celery.signals import worker_shutting_down

    run = launch(team, tiny_base_model)

    def sigterm_after_step_1(sender, instance, created, **kwargs):
        if instance.train_loss is not None and instance.step == 1:
            worker_shutting_down.send(sender="test-worker", sig="SIGTERM", how="Warm", exitcode=0)

    post_save.connect(sigterm_after_step_1, sender=RunMetric, dispatch_uid="sigterm-test")
    try:
        assert train_run(run.pk) == "released"
    finally:
        post_save.disconnect(dispatch_uid="sigterm-test", sender=RunMetric)
        leases.shutdown_requested.clear()
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.attempts == 0 and run.worker_id == "" and run.enqueued_at
    assert run.checkpoint_path.endswith("checkpoint-2") and "this attempt is not counted" in run.log_tail
    assert train_run(run.pk) == RunStatus.SUCCEEDED  # the re-sent message, delivered after the restart
    run.refresh_from_db()
    assert run.attempts == 1 and run.step == 4
    assert list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True)) == [1, 2, 3, 4]


@pytest.mark.django_db
def test_staff_see_an_alarm_when_no_reaper_has_run_recently(team, settings):
    from django.test import Client

    staff = UserFactory(username="operator", is_staff=True)
    client = Client()
    client.force_login(staff)
    page = client.get("/projects/").content.decode()
    assert 'id="reaper-alarm"' in page and "No reaper has ever run" in page and "recovery schedule" in page
    reap()  # runs' pass alone: evaluations, prompts and the API have their own, not run yet
    page = client.get("/projects/").content.decode()
    assert 'id="reaper-alarm"' in page and "evaluations, prompts, api has never run" in page
    evaluations_tasks.reap()
    prompts_tasks.reap()
    api_tasks.reap()
    assert set(ReaperBeat.objects.values_list("name", flat=True)) == {"runs", "evaluations", "prompts", "api"}
    assert 'id="reaper-alarm"' not in client.get("/projects/").content.decode()
    late = timezone.now() - timedelta(seconds=settings.FTSTUDIO_REAPER_ALARM_SECONDS + 5)
    ReaperBeat.objects.filter(name="prompts").update(beat_at=late)  # one pass stopped: the alarm names it
    page = client.get("/projects/").content.decode()
    assert "No reaper has run since" in page and "for prompts" in page
    assert 'id="reaper-alarm"' not in team.client("pm").get("/projects/").content.decode()


@pytest.mark.django_db
def test_a_read_only_database_is_a_clear_page_and_a_clear_cli_error(team, tiny_base_model, monkeypatch, capsys):
    version = small_version(team.project)

    def readonly(**kwargs):
        raise OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(launching, "launch_run", readonly)
    response = team.client("pm").post(
        "/p/support/runs/new/",
        {
            "dataset_version": version.pk,
            "base_model": tiny_base_model.pk,
            "preset": "quick",
            "name": "x",
            "launch_without_prompt": "on",
        },
    )
    body = response.content.decode()
    assert response.status_code == 503 and "read-only" in body and "Traceback" not in body

    import manage

    monkeypatch.setattr(
        "sys.argv",
        [
            "manage.py",
            "launch_run",
            "--project",
            "support",
            "--dataset-version",
            str(version.number),
            "--base-model",
            tiny_base_model.name,
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        manage.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Storage error: the database's disk is read-only") and "Traceback" not in err


def test_an_owner_is_gone_only_when_its_heartbeat_is_stale_and_its_process_is_not_alive_here(settings):
    import os

    now = timezone.now()
    stale = now - timedelta(seconds=settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS + 1)
    fresh = now - timedelta(seconds=1)
    parent = os.getppid()  # alive, on this host
    alive = f"{leases._HOST}:{parent}:{leases._process_start(parent)}:cafe"
    reused_pid = f"{leases._HOST}:{parent}:{leases._process_start(parent)}1:cafe"  # same pid, another process
    assert not leases.owner_gone(DEAD_OWNER, fresh, now)  # a fresh heartbeat is enough, wherever the owner runs
    assert leases.owner_gone(DEAD_OWNER, stale, now) and leases.owner_gone("", None, now)
    assert not leases.owner_gone(alive, stale, now)  # stale, but its process still runs here: not taken over
    assert leases.owner_gone(reused_pid, stale, now)
    mine = leases.new_owner_id()
    assert leases.owner_gone(mine, stale, now)  # this process, but no lease held under that id any more
    leases._active.add(mine)
    try:
        assert not leases.owner_gone(mine, stale, now)
    finally:
        leases._active.discard(mine)


def test_the_beat_schedules_each_app_s_recovery_pass_and_a_worker_knows_each_task():
    from ftstudio.celery import app
    from ftstudio.queueing import RECOVERY_PASSES

    app.finalize()
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert set(RECOVERY_PASSES.values()) <= scheduled
    app.loader.import_default_modules()  # what a worker does at start (autodiscovery of every app's tasks)
    assert all(name in app.tasks for name in RECOVERY_PASSES.values())
    assert set(RECOVERY_PASSES) == {"runs", "evaluations", "prompts", "api"}
