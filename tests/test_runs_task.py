"""The training task: one run per message even when delivered twice, heartbeat and metrics, cancel within a
step, failures recorded, stale runs resumed by the reaper up to three attempts; the run pages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models.signals import post_save
from django.utils import timezone

from apps.runs import base_models, execution, launching
from apps.runs.models import Run, RunMetric, RunStatus
from apps.runs.tasks import reap, train_run
from tests import runs_setup
from tests.runs_setup import FAST, small_version

tiny_base_model = runs_setup.tiny_base_model


pytestmark = pytest.mark.django_db


@pytest.fixture
def run(team, tiny_base_model):
    return launching.launch_run(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=tiny_base_model,
        overrides=FAST,
        user=team.pm,
    )


def test_a_run_trains_records_metrics_and_a_second_delivery_does_not_start_it_again(run, team):
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.attempts == 1 and run.step == run.total_steps == 4
    assert run.heartbeat_at and run.tokens_per_second > 0 and run.final_val_loss is not None
    assert run.adapter_path and (execution.run_dir(run) / "adapter" / "adapter_model.safetensors").is_file()
    steps = list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True))
    assert steps == [1, 2, 3, 4] and run.metrics.filter(val_loss__isnull=False).exists()
    assert train_run(run.pk) == "skipped"  # the duplicated message
    run.refresh_from_db()
    assert run.attempts == 1 and run.metrics.filter(train_loss__isnull=False).count() == 4

    page = team.client("reviewer").get(run.get_absolute_url())
    html = page.content.decode()
    assert 'id="loss-chart" data-points="' in html and "Download adapter" in html and "Cancel run" not in html
    fragment = team.client("pm").get(run.get_absolute_url(), headers={"HX-Request": "true"}).content.decode()
    assert 'id="run-live"' in fragment and "<html" not in fragment and "every 2s" not in fragment  # finished
    zipped = team.client("reviewer").get(f"/p/support/runs/{run.pk}/adapter.zip")
    assert zipped["Content-Type"] == "application/zip" and len(zipped.content) > 1000
    listing = team.client("designer").get("/p/support/runs/").content.decode()
    assert run.get_absolute_url() in listing and "Succeeded" in listing
    compare = team.client("pm").get("/p/support/runs/compare/", {"a": run.pk, "b": run.pk}).content.decode()
    assert "LoRA rank" in compare and "lora_r" not in compare and compare.count("<svg") == 2


def test_a_delivery_while_another_worker_is_running_the_run_is_ignored(run):
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, heartbeat_at=timezone.now(), attempts=1)
    assert train_run(run.pk) == "skipped"
    run.refresh_from_db()
    assert run.attempts == 1 and run.step == 0 and not run.metrics.exists()


def test_cancel_mid_run_stops_within_a_step_and_leaves_no_adapter(run):
    def cancel_after_first_loss(sender, instance, created, **kwargs):
        if instance.train_loss is not None:
            launching.cancel_run(run=Run.objects.get(pk=instance.run_id))

    post_save.connect(cancel_after_first_loss, sender=RunMetric, dispatch_uid="cancel-test")
    try:
        assert train_run(run.pk) == RunStatus.CANCELLED
    finally:
        post_save.disconnect(dispatch_uid="cancel-test", sender=RunMetric)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.step == 2 and run.adapter_path == ""  # asked during step 1's log
    assert not (execution.run_dir(run) / "adapter").exists()


def test_a_failure_stores_the_error_and_the_log_tail(run, tiny_base_model):
    tiny_base_model.source = "/nowhere/model"
    tiny_base_model.save()
    assert train_run(run.pk) == RunStatus.FAILED
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "outside the configured model roots" in run.error
    assert "ModelSourceError" in run.log_tail


def test_the_reaper_resumes_a_run_whose_heartbeat_stopped_from_its_checkpoint(
    run, eager, settings, django_capture_on_commit_callbacks
):
    """A worker died after the checkpoint at step 2: the reaper re-queues it; it resumes and finishes 4 steps."""
    from worker.models import resolve_model_dir
    from worker.train import Hooks, TrainConfig, train

    config = TrainConfig(
        model_dir=resolve_model_dir(base_models.model_spec_for(run.base_model)),
        output_dir=str(execution.run_dir(run)),
        **{k: v for k, v in run.hyperparameters.items() if k != "target_modules"},
    )
    seen = []
    train(
        config,
        run.dataset_version.conversations("train"),
        [],
        Hooks(on_progress=lambda p: seen.append(p.step), should_cancel=lambda: bool(seen) and seen[-1] >= 3),
    )
    stale = timezone.now() - timedelta(seconds=settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS + 5)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, attempts=1, heartbeat_at=stale, step=3)
    with django_capture_on_commit_callbacks(execute=True):  # the reaper sends once its transaction commits
        resent = reap()
    assert resent["runs"] == [run.pk]
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.attempts == 2 and run.step == run.total_steps == 4
    assert "resuming from" in run.log_tail and "checkpoint-2" in run.log_tail
    assert list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True)) == [3, 4]


def test_a_run_that_died_three_times_is_failed_with_the_reason(run, eager, settings):
    stale = timezone.now() - timedelta(seconds=settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS + 5)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, attempts=3, heartbeat_at=stale)
    assert reap()["runs"] == []
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "stopped 3 times" in run.error
