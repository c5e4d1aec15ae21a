"""A run on several devices / nodes through the app: the launch validates devices and nodes, the estimate states
them and warns when no live worker of the queue can run them, and the training task trains them with torchrun
(gloo on this CPU) reporting into the same row, metrics and log as the in-process path; cancel stops it."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.db.models.signals import post_save

from apps.fleet import services as fleet
from apps.runs import execution, launching
from apps.runs.models import Run, RunMetric, RunStatus
from apps.runs.tasks import train_run
from tests import runs_setup
from tests.runs_setup import FAST, small_version
from tests.test_worker_distributed import fault_env

tiny_base_model = runs_setup.tiny_base_model

pytestmark = pytest.mark.django_db


def launch(team, base_model, **overrides):
    return launching.launch_run(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=base_model,
        overrides={**FAST, **overrides},
        user=team.pm,
    )


def test_devices_and_nodes_are_checked_at_launch(team, tiny_base_model):
    version = small_version(team.project)
    for overrides, field, message in [
        ({"devices": 0}, "devices", "Devices must be a whole number from 1 to 16; got 0."),
        ({"devices": 64}, "devices", "Devices must be a whole number from 1 to 16; got 64."),
        ({"nodes": "two"}, "nodes", "Nodes must be a whole number, got 'two'."),
        ({"nodes": 1.5}, "nodes", "Nodes must be a whole number from 1 to 8; got 1.5."),
        ({"devices": 3}, "batch_size", "Batch size 4 does not split evenly over 3 devices (3 per node x 1 node(s))"),
    ]:
        with pytest.raises(launching.LaunchError) as refused:
            launching.prepare_launch(
                project=team.project,
                dataset_version=version,
                base_model=tiny_base_model,
                overrides={**FAST, **overrides},
            )
        assert refused.value.errors[field].startswith(message), refused.value.errors
    run = launch(team, tiny_base_model, devices=2, nodes=2)
    assert (run.devices, run.nodes) == (2, 2) and "devices" not in run.hyperparameters
    assert run.estimate["per_device_batch"] == 1 and run.estimate["steps"] == 4  # the same steps: a global batch


def test_the_estimate_states_the_devices_and_warns_when_no_live_worker_has_them(team, tiny_base_model):
    version = small_version(team.project)
    url = f"/p/{team.project.slug}/runs/estimate/"
    params = {"dataset_version": version.pk, "base_model": tiny_base_model.pk, "preset": "quick", "devices": 2}
    hx = {"HX-Request": "true"}
    fleet.beat(hostname="gpu-node-1", queues=["gpu"], gpus=(1, 24))
    page = team.client("pm").get(url, params, headers=hx).content.decode()
    assert "Trains on 2 devices (DDP), 4 examples per device per batch." in page
    assert "No live worker of queue gpu has 2 GPUs (the most is 1)" in page
    fleet.beat(hostname="gpu-node-2", queues=["gpu"], gpus=(4, 80))
    page = team.client("pm").get(url, params, headers=hx).content.decode()
    assert "Trains on 2 devices" in page and 'id="estimate-scale-warning"' not in page
    page = team.client("pm").get(url, {**params, "nodes": 2}, headers=hx).content.decode()
    assert "Trains on 2 devices x 2 nodes (DDP), 2 examples per device per batch." in page
    assert "The run asks for 2 nodes but 1 live worker(s) of queue gpu can take part" in page
    fleet.forget(hostname="gpu-node-1")
    fleet.forget(hostname="gpu-node-2")
    fleet.beat(hostname="cpu-node", queues=["gpu", "default"], gpus=(0, 0))
    page = team.client("pm").get(url, params, headers=hx).content.decode()
    assert "have no GPU: the run trains as 2 CPU processes (gloo) per node" in page
    page = team.client("pm").get(url, {**params, "devices": 3}, headers=hx).content.decode()
    assert "does not split evenly over 3 devices" in page


def test_a_run_on_two_devices_trains_through_the_task_and_reports_like_one(team, tiny_base_model):
    run = launch(team, tiny_base_model, devices=2)
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.step == run.total_steps == 4
    assert run.final_val_loss is not None and run.final_train_loss is not None and run.tokens_per_second
    steps = list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True))
    assert steps == [1, 2, 3, 4] and run.metrics.filter(val_loss__isnull=False).exists()
    assert run.checkpoint_path.endswith("checkpoint-4")
    assert (execution.run_dir(run) / "adapter" / "adapter_model.safetensors").is_file()
    assert "training on 2 devices (DDP)" in run.log_tail and "saved adapter" in run.log_tail
    page = team.client("reviewer").get(run.get_absolute_url()).content.decode()
    assert "Trains on 2 devices (DDP), 2 examples per device per batch." in page


def test_cancel_stops_a_run_on_two_devices_without_an_adapter(team, tiny_base_model, monkeypatch):
    for key, value in fault_env(training_step_seconds=0.3).items():
        monkeypatch.setenv(key, value)
    run = launch(team, tiny_base_model, devices=2, max_steps=30, save_steps=100)

    def cancel_after_first_loss(sender, instance, created, **kwargs):
        if instance.train_loss is not None:
            launching.cancel_run(run=Run.objects.get(pk=instance.run_id))

    post_save.connect(cancel_after_first_loss, sender=RunMetric, dispatch_uid="ddp-cancel-test")
    try:
        assert train_run(run.pk) == RunStatus.CANCELLED
    finally:
        post_save.disconnect(dispatch_uid="ddp-cancel-test", sender=RunMetric)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and 1 <= run.step < 30 and run.adapter_path == ""
    assert not (execution.run_dir(run) / "adapter").exists()


def test_a_paused_run_on_two_devices_resumes_from_its_checkpoint_to_the_last_step(team, tiny_base_model, monkeypatch):
    for key, value in fault_env(training_step_seconds=0.3).items():
        monkeypatch.setenv(key, value)
    run = launch(team, tiny_base_model, devices=2, max_steps=12, save_steps=100)

    def pause_after_first_loss(sender, instance, created, **kwargs):
        if instance.train_loss is not None and not Run.objects.get(pk=instance.run_id).pause_requested:
            launching.pause_run(run=Run.objects.get(pk=instance.run_id))

    post_save.connect(pause_after_first_loss, sender=RunMetric, dispatch_uid="ddp-pause-test")
    try:
        assert train_run(run.pk) == RunStatus.PAUSED
    finally:
        post_save.disconnect(dispatch_uid="ddp-pause-test", sender=RunMetric)
    run.refresh_from_db()
    paused_at = run.step
    assert 1 <= paused_at < 12 and run.checkpoint_path.endswith(f"checkpoint-{paused_at}")
    monkeypatch.delenv("FTSTUDIO_FAULT_TRAINING_STEP_SECONDS")
    launching.resume_paused_run(run=run)
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.step == run.total_steps == 12
    assert any(
        line.startswith("resuming from") and line.endswith(f"checkpoint-{paused_at}")
        for line in run.log_tail.splitlines()
    )
    steps = list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True))
    assert steps == list(range(1, 13))  # each step once: the metrics past the checkpoint were logged again


def test_a_failing_rank_fails_the_run_with_its_error(team, tiny_base_model, monkeypatch):
    for key, value in fault_env(rank_fails="1:1").items():
        monkeypatch.setenv(key, value)
    run = launch(team, tiny_base_model, devices=2)
    assert train_run(run.pk) == RunStatus.FAILED
    run.refresh_from_db()
    assert run.error.startswith("DistributedError: Rank 1 failed: RuntimeError: injected fault: rank 1 lost its device")


@pytest.mark.django_db(transaction=True)
def test_a_run_on_two_nodes_asks_another_worker_to_join_and_trains_with_it(team, tiny_base_model, monkeypatch):
    """The task hosts the rendezvous and sends `runs.join_distributed_run`; here the joining "worker" is a thread
    on this machine running that task's service (the two torchrun launches meet over 127.0.0.1)."""
    monkeypatch.setenv("FTSTUDIO_NODE_ADDRESS", "127.0.0.1")
    joined, threads = [], []

    class Join:
        @staticmethod
        def delay(*args):
            def work():
                try:
                    joined.append(execution.execute_join(*args))
                finally:
                    connection.close()

            threads.append(threading.Thread(target=work))
            threads[-1].start()

    monkeypatch.setattr(execution, "join_distributed_run", Join)
    run = launch(team, tiny_base_model, nodes=2)
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    for thread in threads:
        thread.join(timeout=120)
    assert joined == ["joined"]
    run.refresh_from_db()
    assert run.step == 4 and "hosting the rendezvous at 127.0.0.1:" in run.log_tail
    assert list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True)) == [1, 2, 3, 4]
    assert (execution.run_dir(run) / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((execution.run_dir(run) / "nodes").glob("*"))  # the joining node's scratch folder is gone
    assert execution.execute_join(run.pk, "127.0.0.1:1", f"run-{run.pk}-1") == "skipped"  # finished: nothing to join


def test_a_join_message_of_an_earlier_attempt_is_skipped(team, tiny_base_model):
    run = launch(team, tiny_base_model, nodes=2)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, attempts=2)
    assert execution.execute_join(run.pk, "127.0.0.1:1", f"run-{run.pk}-1") == "skipped"
