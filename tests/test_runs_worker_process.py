"""A real Celery worker subprocess is killed in the middle of a run; the reaper re-queues the run, a new
worker resumes it from its last checkpoint and it finishes with the same total number of steps."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from apps.runs import services
from apps.runs.models import Run, RunStatus
from tests import runs_setup
from tests.runs_setup import small_version
from tests.worker_process import running_worker

tiny_base_model = runs_setup.tiny_base_model


STALE_SECONDS = 4


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


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_s_run_resumes_from_its_checkpoint_and_finishes_the_same_steps(
        team, tiny_base_model, tiny_model_dir, settings, tmp_path):
    settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS = STALE_SECONDS
    env = {"FTSTUDIO_MODEL_ROOTS": str(Path(tiny_model_dir).parent), "FTSTUDIO_HEARTBEAT_STALE_SECONDS": str(STALE_SECONDS)}
    version = small_version(team.project)
    with running_worker(tmp_path / "first", queues="gpu,default", extra_env=env) as worker:
        run = services.launch_run(project=team.project, dataset_version=version, base_model=tiny_base_model,
                                  overrides={"max_steps": 12, "batch_size": 4, "save_steps": 3, "max_seq_length": 128})
        wait_for(lambda: Run.objects.filter(pk=run.pk, step__gte=4).exclude(checkpoint_path="").exists(), 180,
                 worker, "a checkpoint")
        worker.kill()
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.attempts == 1 and 4 <= run.step < 12
    killed_at = run.step
    checkpoint = Path(run.checkpoint_path).name

    with running_worker(tmp_path / "second", queues="gpu,default", extra_env=env) as worker:
        time.sleep(max(0.0, STALE_SECONDS + 1 - (time.time() - run.heartbeat_at.timestamp())))
        assert services.reap()["runs"] == [run.pk]
        wait_for(lambda: Run.objects.get(pk=run.pk).is_finished, 180, worker, "the resumed run to finish")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 2 and run.step == run.total_steps == 12
    assert "resuming from" in run.log_tail and checkpoint in run.log_tail
    steps = list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True))
    assert steps == list(range(1, 13))  # every step once: those after the checkpoint were trained again
    assert int(checkpoint.split("-")[1]) <= killed_at
    assert Path(run.adapter_path, "adapter_model.safetensors").is_file()
