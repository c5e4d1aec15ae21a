"""Many nodes, no shared disk, on one machine: two Celery workers with their own var dir and media root share only
the database, the broker and the object store (a real SeaweedFS). A run started on the first is resumed by the
second from the checkpoint the first stored, to the same total steps, after the first node's disk is gone; an
evaluation generated on the second uses an adapter trained on the first."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from apps.evaluations import generation as eval_services_generation
from apps.evaluations import services as eval_services
from apps.evaluations.models import Evaluation, EvaluationStatus, Generation
from apps.runs import artifacts, launching, recovery
from apps.runs.models import Run, RunStatus
from tests import runs_setup
from tests.eval_setup import make_rubric, make_version
from tests.runs_setup import small_version
from tests.test_runs_worker_process import STALE_SECONDS, wait_until_stale, worker_env
from tests.worker_process import running_worker, wait_for

tiny_base_model = runs_setup.tiny_base_model


def node_env(node: Path, tiny_model_dir) -> dict:
    """A node's own disk: var dir (model cache, artifact cache) and media root; the rest is shared."""
    return {
        **worker_env(tiny_model_dir),
        "FTSTUDIO_VAR_DIR": str(node / "var"),
        "FTSTUDIO_MEDIA_ROOT": str(node / "media"),
        "CELERY_RESULT_BACKEND": django_settings.CELERY_RESULT_BACKEND,
    }


@pytest.mark.django_db(transaction=True)
def test_a_run_killed_on_one_node_is_finished_on_another_from_the_stored_checkpoint_and_its_adapter_is_evaluated_there(
    team, tiny_base_model, tiny_model_dir, s3_artifacts, settings, tmp_path
):
    settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS = STALE_SECONDS
    first, second = tmp_path / "node-a", tmp_path / "node-b"
    version = small_version(team.project)
    with running_worker(first, extra_env=node_env(first, tiny_model_dir)) as worker:
        short = launching.launch_run(
            project=team.project, dataset_version=version, base_model=tiny_base_model, overrides=runs_setup.FAST
        )
        run = launching.launch_run(
            project=team.project,
            dataset_version=version,
            base_model=tiny_base_model,
            overrides={"max_steps": 12, "batch_size": 4, "save_steps": 3, "max_seq_length": 128},
        )
        wait_for(
            lambda: Run.objects.filter(pk=run.pk, step__gte=4).exclude(checkpoint_path="").exists(),
            240,
            worker,
            "a stored checkpoint",
        )
        worker.kill()
    short.refresh_from_db()
    run.refresh_from_db()
    assert short.status == RunStatus.SUCCEEDED and short.adapter_path.startswith(str(first / "media"))
    assert run.status == RunStatus.RUNNING and run.checkpoint_path.startswith(str(first / "media"))
    stored = Path(run.checkpoint_path).name
    assert f"runs/{run.pk}/checkpoints/{stored}" in artifacts.store().complete_dirs(f"runs/{run.pk}/checkpoints")
    shutil.rmtree(first)  # the first node is gone, and its disk with it

    with running_worker(second, extra_env=node_env(second, tiny_model_dir)) as worker:
        wait_until_stale(run.heartbeat_at)
        assert recovery.reap()["runs"] == [run.pk]
        wait_for(lambda: Run.objects.get(pk=run.pk).is_finished, 240, worker, "the resumed run to finish")
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
        assert run.attempts == 2 and run.step == run.total_steps == 12
        fetched = re.search(r"fetched (checkpoint-(\d+)) from the artifact store", run.log_tail)
        assert fetched and int(fetched[2]) >= int(stored.split("-")[1])  # what the first node stored, or newer
        resumed = fetched[1]
        assert f"resuming from {second / 'media'}/runs/{run.pk}/checkpoints/{resumed}" in run.log_tail
        assert list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True)) == list(range(1, 13))
        assert Path(run.adapter_path).is_relative_to(second / "media")

        evaluation = eval_services.create_evaluation(
            project=team.project,
            dataset_version=make_version(team.project, 3),
            rubric=make_rubric(team.project),
            base_model=tiny_base_model,
            enqueue=False,
            max_new_tokens=4,
            user=team.pm,
            candidates=[eval_services.CandidateSpec("base"), eval_services.CandidateSpec("run", run_id=short.pk)],
        )
        eval_services_generation.send_generation(evaluation)
        wait_for(
            lambda: Evaluation.objects.get(pk=evaluation.pk).status
            not in {EvaluationStatus.QUEUED, EvaluationStatus.GENERATING},
            240,
            worker,
            "the evaluation's outputs",
        )
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.READY, evaluation.error
    assert Generation.objects.filter(candidate__evaluation=evaluation, candidate__run=short).count() == 3
    cached = second / "var" / "artifact-cache" / "runs" / str(short.pk) / "adapter"
    assert (cached / "adapter_model.safetensors").is_file()  # fetched from the store into the node's bounded cache
