"""A deploy during validation (a warm shutdown, SIGTERM to the worker) stops the pass within one batch, costs no
attempt, and the next attempt goes on with the pass where it stopped: the finished batches are not computed again
and the validation loss is the same as an uninterrupted pass's. In-process on the tiny model."""

from __future__ import annotations

import pytest
from transformers import Trainer

from apps.runs import launching, leases
from apps.runs.models import Run, RunMetric, RunStatus
from apps.runs.tasks import train_run
from tests import runs_setup
from tests.factories import make_dataset_version
from tests.runs_setup import FAST, support_conversations

tiny_base_model = runs_setup.tiny_base_model


@pytest.fixture
def batches(monkeypatch):
    """Counts the validation batches computed (and their losses); ``shutdown_at`` = N sends the warm shutdown right
    after the N-th computed batch of the next attempt."""

    class Batches:
        losses: list[float] = []
        computed = 0
        shutdown_at = 0

    original = Trainer.prediction_step

    def prediction_step(self, *args, **kwargs):
        loss, logits, labels = original(self, *args, **kwargs)
        Batches.computed += 1
        Batches.losses.append(float(loss))
        if Batches.computed == Batches.shutdown_at:
            leases.shutdown_requested.set()  # what Celery's worker_shutting_down handler sets
        return loss, logits, labels

    monkeypatch.setattr(Trainer, "prediction_step", prediction_step)
    yield Batches
    leases.shutdown_requested.clear()


def launch(team, tiny_base_model, **overrides) -> Run:
    version = make_dataset_version(
        team.project,
        {"train": support_conversations(12), "val": support_conversations(8, 50), "test": support_conversations(2, 70)},
    )
    return launching.launch_run(
        project=team.project,
        dataset_version=version,
        base_model=tiny_base_model,
        overrides={**FAST, **overrides},
        user=team.pm,
    )


@pytest.mark.django_db
def test_a_shutdown_during_the_final_validation_costs_neither_the_pass_nor_an_attempt(team, tiny_base_model, batches):
    run = launch(team, tiny_base_model, batch_size=2)  # 6 steps an epoch: only the final pass, 4 batches of 2
    batches.shutdown_at = 2
    assert train_run(run.pk) == "released"
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.attempts == 0 and run.step == 4
    assert batches.computed == 2 and not RunMetric.objects.filter(run=run, val_loss__isnull=False).exists()

    leases.shutdown_requested.clear()
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.attempts == 1 and batches.computed == 4  # the next attempt computed only the 2 batches left
    assert run.final_val_loss == pytest.approx(sum(batches.losses) / 4, rel=1e-4)  # the whole pass's mean
    assert "finishing the validation pass" not in run.log_tail  # the final step: resumed as finished, then validated
    assert list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True)) == [1, 2, 3, 4]


@pytest.mark.django_db
def test_a_shutdown_during_an_epoch_s_validation_keeps_the_step_and_the_pass(team, tiny_base_model, batches):
    run = launch(team, tiny_base_model)  # batch 4: 3 steps an epoch, a pass (2 batches of 4) at step 3, then step 4
    batches.shutdown_at = 1
    assert train_run(run.pk) == "released"
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.attempts == 0
    assert run.checkpoint_path.endswith("checkpoint-3")  # the step the pass belonged to is kept: no step trained twice

    leases.shutdown_requested.clear()
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.attempts == 1 and "finishing the validation pass of step 3" in run.log_tail
    assert batches.computed == 1 + 1 + 2  # batch 1 before the shutdown, batch 2 of step 3 after it, step 4's pass
    step_3 = RunMetric.objects.get(run=run, step=3, val_loss__isnull=False).val_loss
    assert step_3 == pytest.approx(sum(batches.losses[:2]) / 2, rel=1e-4)
    assert list(run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True)) == [1, 2, 3, 4]
