"""Queues by hardware: a base model states the GPU memory it needs, its runs go to the smallest GPU tier queue
that has it, workers write a WorkerBeat row naming the queues they consume, and the launch estimate names the
queue and warns when no live worker serves it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.fleet import services as fleet
from apps.fleet.models import WorkerBeat
from apps.fleet.queues import route
from apps.runs import launching
from apps.runs.models import Run, RunStatus
from tests import runs_setup
from tests.runs_setup import small_version
from tests.test_runs_worker_process import worker_env
from tests.worker_process import running_worker, wait_for

tiny_base_model = runs_setup.tiny_base_model


@pytest.mark.django_db
def test_a_model_s_gpu_need_picks_the_smallest_tier_and_a_need_over_every_tier_is_refused(
    team, tiny_base_model, settings
):
    settings.FTSTUDIO_GPU_TIERS = [24, 80]
    version = small_version(team.project)
    cases = {0: "gpu", 8: "gpu-24g", 24: "gpu-24g", 40: "gpu-80g"}
    for need, queue in cases.items():
        tiny_base_model.min_gpu_gb = need
        tiny_base_model.save()
        *_, estimate = launching.prepare_launch(
            project=team.project, dataset_version=version, base_model=tiny_base_model
        )
        assert estimate["queue"] == queue
    run = launching.launch_run(project=team.project, dataset_version=version, base_model=tiny_base_model)
    assert route("runs.train_run", (run.pk,), {}, {}) == {"queue": "gpu-80g"} and run.estimate["queue"] == "gpu-80g"
    tiny_base_model.min_gpu_gb = 160
    tiny_base_model.save()
    with pytest.raises(launching.LaunchError) as refused:
        launching.prepare_launch(project=team.project, dataset_version=version, base_model=tiny_base_model)
    assert refused.value.errors["base_model"].startswith(
        "Tiny Llama needs 160 GB of GPU memory. No GPU tier has 160 GB"
    )


@pytest.mark.django_db
def test_the_launch_estimate_names_the_queue_and_warns_until_a_live_worker_serves_it(team, tiny_base_model, settings):
    tiny_base_model.min_gpu_gb = 20
    tiny_base_model.save()
    version = small_version(team.project)
    url = f"/p/{team.project.slug}/runs/estimate/"
    params = {"dataset_version": version.pk, "base_model": tiny_base_model.pk, "preset": "quick"}
    page = team.client("pm").get(url, params, headers={"HX-Request": "true"}).content.decode()
    assert "Worker queue: <code>gpu-24g</code>" in page
    assert "No running worker serves queue gpu-24g" in page
    fleet.beat(hostname="gpu-node-1", queues=["gpu", "gpu-24g"], gpus=(1, 24))
    page = team.client("pm").get(url, params, headers={"HX-Request": "true"}).content.decode()
    assert "Worker queue: <code>gpu-24g</code>" in page and "No running worker serves" not in page
    WorkerBeat.objects.update(beat_at=timezone.now() - timedelta(seconds=settings.FTSTUDIO_WORKER_BEAT_SECONDS * 4))
    page = team.client("pm").get(url, params, headers={"HX-Request": "true"}).content.decode()
    assert "No running worker serves queue gpu-24g" in page  # its beat stopped: not counted


@pytest.mark.django_db(transaction=True)
def test_a_worker_on_a_tier_queue_beats_and_trains_the_runs_routed_there(
    team, tiny_base_model, tiny_model_dir, tmp_path
):
    tiny_base_model.min_gpu_gb = 20
    tiny_base_model.save()
    env = {**worker_env(tiny_model_dir), "FTSTUDIO_WORKER_BEAT_SECONDS": "1"}
    with running_worker(tmp_path, queues="gpu-24g,default", extra_env=env) as worker:
        beat = wait_for(
            lambda: next((w for w in WorkerBeat.objects.all() if "gpu-24g" in w.queues), None), 60, worker, "its beat"
        )
        assert beat.queues == ["default", "gpu-24g"] and beat.gpu_count == 0
        run = launching.launch_run(
            project=team.project,
            dataset_version=small_version(team.project),
            base_model=tiny_base_model,
            overrides=runs_setup.FAST,
        )
        assert run.estimate["queue"] == "gpu-24g" and run.estimate["queue_warning"] == ""
        wait_for(lambda: Run.objects.get(pk=run.pk).is_finished, 180, worker, "the run on queue gpu-24g")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert not WorkerBeat.objects.filter(hostname=beat.hostname).exists()  # a warm shutdown removes its row
