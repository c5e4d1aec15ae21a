"""Faults with a real Celery worker subprocess, on whatever backend is configured (SQLite + filesystem broker by
default; CI reruns them on PostgreSQL + Redis): a worker killed mid-run, a live run in a validation longer than
the staleness limit (not taken over) then killed in it, a lost queued message, an evaluation killed mid-generation.
Slow phases are made slow in the worker by tests/faults/sitecustomize.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from django.utils import timezone

from apps.evaluations import generation as eval_services_generation
from apps.evaluations.models import Evaluation, EvaluationStatus, Generation
from apps.runs import execution, launching, recovery
from apps.runs.models import Run, RunStatus
from tests import runs_setup
from tests.conftest import REPO
from tests.eval_setup import make_evaluation
from tests.factories import make_dataset_version
from tests.runs_setup import small_version, support_conversations
from tests.worker_process import purge_queues, running_worker, start_worker, wait_for, wait_for_ping

tiny_base_model = runs_setup.tiny_base_model


STALE_SECONDS = 4


def worker_env(tiny_model_dir, stale: int = STALE_SECONDS, **faults) -> dict:
    env = {
        "FTSTUDIO_MODEL_ROOTS": str(Path(tiny_model_dir).parent),
        "FTSTUDIO_HEARTBEAT_STALE_SECONDS": str(stale),
        "FTSTUDIO_HEARTBEAT_SECONDS": str(stale / 8),
    }
    # Every step takes at least 0.2 s: on an idle machine the tiny model trains 12 steps in under 3 s, and a test
    # that stops or kills the worker midway must find it still training.
    faults = {"training_step_seconds": 0.2, **faults}
    if faults:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "faults"), os.environ.get("PYTHONPATH", str(REPO))])
        env.update({f"FTSTUDIO_FAULT_{k.upper()}": str(v) for k, v in faults.items()})
    return env


def wait_until_stale(heartbeat_at, stale: int = STALE_SECONDS) -> None:
    time.sleep(max(0.0, stale + 1 - (time.time() - heartbeat_at.timestamp())))


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_s_run_resumes_from_its_checkpoint_and_finishes_the_same_steps(
    team, tiny_base_model, tiny_model_dir, settings, tmp_path
):
    settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS = STALE_SECONDS
    env = worker_env(tiny_model_dir)
    version = small_version(team.project)
    with running_worker(tmp_path / "first", queues="gpu,default", extra_env=env) as worker:
        run = launching.launch_run(
            project=team.project,
            dataset_version=version,
            base_model=tiny_base_model,
            overrides={"max_steps": 12, "batch_size": 4, "save_steps": 3, "max_seq_length": 128},
        )
        wait_for(
            lambda: Run.objects.filter(pk=run.pk, step__gte=4).exclude(checkpoint_path="").exists(),
            180,
            worker,
            "a checkpoint",
        )
        worker.kill()
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.attempts == 1 and 4 <= run.step < 12
    killed_at = run.step
    checkpoint = Path(run.checkpoint_path).name

    with running_worker(tmp_path / "second", queues="gpu,default", extra_env=env) as worker:
        wait_until_stale(run.heartbeat_at)
        assert recovery.reap()["runs"] == [run.pk]
        wait_for(lambda: Run.objects.get(pk=run.pk).is_finished, 180, worker, "the resumed run to finish")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 2 and run.step == run.total_steps == 12
    assert "resuming from" in run.log_tail and checkpoint in run.log_tail
    steps = list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True))
    assert steps == list(range(1, 13))  # every step once: those after the checkpoint were trained again
    assert int(checkpoint.split("-")[1]) <= killed_at
    assert Path(run.adapter_path, "adapter_model.safetensors").is_file()


@pytest.mark.django_db(transaction=True)
def test_a_live_run_in_a_long_final_validation_is_not_taken_over_and_killed_there_finishes_without_training(
    team, tiny_base_model, tiny_model_dir, settings, tmp_path
):
    """The issue's fault: the final validation lasted longer than the staleness limit, the reaper re-queued a live
    run and a second worker trained it alongside (5 steps of 4, checkpoint-5). Here the validation takes 8 batches
    of over a second with a 4 s limit: the heartbeat thread keeps the run fresh and the reaper leaves it alone.
    Killed there, it is resumed from checkpoint-4 and finished without training a fifth step."""
    settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS = STALE_SECONDS
    version = make_dataset_version(
        team.project,
        {
            "train": support_conversations(16),
            "val": support_conversations(32, 50),
            "test": support_conversations(2, 90),
        },
    )
    slow = worker_env(tiny_model_dir, validation_batch_seconds=1.2)
    with running_worker(tmp_path / "first", queues="gpu,default", extra_env=slow) as worker:
        run = launching.launch_run(
            project=team.project,
            dataset_version=version,
            base_model=tiny_base_model,
            overrides={"max_steps": 4, "batch_size": 4, "save_steps": 2, "max_seq_length": 128},
        )
        wait_for(
            lambda: Run.objects.filter(pk=run.pk, step=4, phase="validating").exists(),
            180,
            worker,
            "the final validation",
        )
        validating_since = Run.objects.get(pk=run.pk).heartbeat_at
        time.sleep(STALE_SECONDS + 1)
        run.refresh_from_db()
        assert run.phase == "validating" and not run.is_finished, "the validation ended too early to test anything"
        assert (timezone.now() - run.heartbeat_at).total_seconds() < STALE_SECONDS
        assert run.heartbeat_at > validating_since  # beaten during the validation, not only at step ends
        assert recovery.reap()["runs"] == []  # a live run is not re-queued
        worker.kill()
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.checkpoint_path.endswith("checkpoint-4") and not run.adapter_path

    with running_worker(tmp_path / "second", queues="gpu,default", extra_env=worker_env(tiny_model_dir)) as worker:
        wait_until_stale(run.heartbeat_at)
        assert recovery.reap()["runs"] == [run.pk]
        wait_for(lambda: Run.objects.get(pk=run.pk).is_finished, 180, worker, "the resumed run to finish")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 2 and run.step == run.total_steps == 4 and run.final_val_loss is not None
    assert "finishing without training" in run.log_tail
    assert list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True)) == [1, 2, 3, 4]
    assert list(run.metrics.filter(val_loss__isnull=False).values_list("step", flat=True)) == [4]
    assert sorted(p.name for p in (execution.run_dir(run) / "checkpoints").iterdir())[-1] == "checkpoint-4"
    assert Path(run.adapter_path, "adapter_model.safetensors").is_file()


@pytest.mark.django_db(transaction=True)
def test_a_queued_run_whose_message_the_broker_lost_is_sent_again_by_the_reaper(
    team, tiny_base_model, tiny_model_dir, settings, tmp_path
):
    settings.FTSTUDIO_REQUEUE_AFTER_SECONDS = 1
    run = launching.launch_run(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=tiny_base_model,
        overrides=runs_setup.FAST,
    )
    purge_queues()  # the broker lost the message
    with running_worker(tmp_path / "worker", queues="gpu,default", extra_env=worker_env(tiny_model_dir)) as worker:
        time.sleep(1.5)
        assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED  # nothing to deliver: stranded
        assert recovery.reap()["queued_runs"] == [run.pk]
        wait_for(lambda: Run.objects.get(pk=run.pk).is_finished, 180, worker, "the re-sent run to finish")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.attempts == 1 and run.step == 4, run.error


@pytest.mark.django_db(transaction=True)
def test_an_evaluation_killed_mid_generation_is_resumed_by_the_reaper_keeping_finished_outputs(
    team, tiny_model_dir, settings, tmp_path
):
    settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS = STALE_SECONDS
    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, generate=False)
    slow = worker_env(tiny_model_dir, generation_batch_seconds=3)
    with running_worker(tmp_path / "first", queues="gpu,default", extra_env=slow) as worker:
        eval_services_generation.send_generation(evaluation)
        wait_for(
            lambda: Evaluation.objects.filter(pk=evaluation.pk, done__gte=3).exists(),
            180,
            worker,
            "the first candidate's outputs",
        )
        worker.kill()  # during the second candidate's batch
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.GENERATING and evaluation.done == 3 and evaluation.attempts == 1
    kept = dict(Generation.objects.filter(candidate__evaluation=evaluation).values_list("pk", "created_at"))

    with running_worker(tmp_path / "second", queues="gpu,default", extra_env=worker_env(tiny_model_dir)) as worker:
        wait_until_stale(evaluation.heartbeat_at)
        assert eval_services_generation.reap()["evaluations"] == [evaluation.pk]
        wait_for(
            lambda: Evaluation.objects.get(pk=evaluation.pk).status != EvaluationStatus.GENERATING,
            180,
            worker,
            "the resumed generation",
        )
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.READY and evaluation.done == evaluation.total == 9
    assert evaluation.attempts == 2
    after = dict(Generation.objects.filter(candidate__evaluation=evaluation).values_list("pk", "created_at"))
    assert {pk: after[pk] for pk in kept} == kept and len(after) == 9  # finished outputs kept, not generated again


@pytest.mark.django_db(transaction=True)
def test_a_deploy_s_sigterm_stops_the_run_at_a_checkpoint_and_the_next_worker_finishes_it_without_an_attempt(
    team, tiny_base_model, tiny_model_dir, settings, tmp_path
):
    """`docker compose stop` sends SIGTERM: the run stops at the end of its step with a checkpoint of that step (no
    regular save is due), goes back to the queue with its attempt given back, and its message is sent again."""
    env = worker_env(tiny_model_dir)
    purge_queues()
    worker = start_worker(tmp_path / "first" / "worker.log", extra_env=env)
    try:
        wait_for_ping(worker)
        run = launching.launch_run(
            project=team.project,
            dataset_version=small_version(team.project),
            base_model=tiny_base_model,
            overrides={"max_steps": 12, "batch_size": 4, "save_steps": 100, "max_seq_length": 128},
        )
        wait_for(lambda: Run.objects.filter(pk=run.pk, step__gte=2).exists(), 180, worker, "two steps")
    finally:
        worker.stop()  # SIGTERM, then waits for the warm shutdown
    assert worker.process.returncode == 0, worker.log()[-3000:]
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.attempts == 0 and run.worker_id == "", run.log_tail
    stopped_at = int(Path(run.checkpoint_path).name.split("-")[1])
    assert 2 <= stopped_at < 12 and "this attempt is not counted" in run.log_tail

    worker = start_worker(tmp_path / "second" / "worker.log", extra_env=env)  # the queue is kept: no purge
    try:
        wait_for(lambda: Run.objects.get(pk=run.pk).is_finished, 180, worker, "the re-sent run to finish")
    finally:
        worker.stop()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.attempts == 1 and run.step == 12, run.error
    assert f"resuming from {execution.run_dir(run)}/checkpoints/checkpoint-{stopped_at}" in run.log_tail
    assert list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True)) == list(range(1, 13))
