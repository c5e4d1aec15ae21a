"""When no worker answers, the pages and the `--wait` commands say so ("No worker has answered for N minutes"),
from the workers' own beat rows (apps/fleet), instead of showing "queued" forever."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from apps.evaluations.models import Evaluation, EvaluationStatus
from apps.fleet import services as fleet
from apps.fleet.models import WorkerBeat
from apps.fleet.selectors import worker_silence
from apps.runs.models import Run, RunStatus
from tests.eval_setup import make_rubric, make_run, make_version, register_tiny_model


def worker_last_seen(minutes_ago: float, queues=("default", "gpu")) -> WorkerBeat:
    at = timezone.now() - timedelta(minutes=minutes_ago)
    return WorkerBeat.objects.create(hostname="celery@laptop", queues=list(queues), started_at=at, beat_at=at)


@pytest.mark.django_db
def test_the_run_page_says_no_worker_has_answered_until_one_beats_again(team, settings, tmp_path):
    base = register_tiny_model(settings, tmp_path / "no-weights-needed")
    run = make_run(team.project, make_version(team.project), base, tmp_path / "adapter")
    queued_at = timezone.now() - timedelta(minutes=25)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.QUEUED, adapter_path="", enqueued_at=queued_at)
    worker_last_seen(minutes_ago=40)  # the worker died 40 minutes ago

    page = team.client("pm").get(run.get_absolute_url()).content.decode()
    assert "No worker has answered for 40 minutes." in page and 'id="worker-silence"' in page

    fleet.beat(hostname="celery@laptop", queues=["default", "gpu"], gpus=(0, 0))  # restarted: it beats again
    assert 'id="worker-silence"' not in team.client("pm").get(run.get_absolute_url()).content.decode()

    WorkerBeat.objects.all().delete()  # no worker ever beat (a warm shutdown removes its row): count from the queueing
    assert "No worker has answered for 25 minutes." in team.client("pm").get(run.get_absolute_url()).content.decode()
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED)
    assert 'id="worker-silence"' not in team.client("pm").get(run.get_absolute_url()).content.decode()


@pytest.mark.django_db
def test_silence_counts_only_workers_of_the_queue_and_is_quiet_while_one_may_be_starting():
    now = timezone.now()
    assert worker_silence("gpu", since=now - timedelta(seconds=30), now=now) == ""  # just queued
    assert worker_silence("gpu", since=now - timedelta(minutes=1, seconds=5), now=now) == (
        "No worker has answered for 1 minute."
    )
    worker_last_seen(minutes_ago=0.1, queues=("default",))  # alive, but not consuming gpu
    assert worker_silence("gpu", since=now - timedelta(minutes=3), now=now) == "No worker has answered for 3 minutes."
    assert worker_silence("default", since=now - timedelta(minutes=3), now=now) == ""


@pytest.mark.django_db
def test_run_eval_wait_says_no_worker_has_answered_instead_of_waiting_silently(
    team, settings, tmp_path, capsys, monkeypatch
):
    import apps.evaluations.management.commands.run_eval as run_eval

    base = register_tiny_model(settings, tmp_path / "no-weights-needed")
    version = make_version(team.project, test_count=2)
    make_rubric(team.project)
    worker_last_seen(minutes_ago=25)

    def the_next_poll_finds_it_failed(seconds):  # end the wait after one round, as a worker giving up would
        Evaluation.objects.update(status=EvaluationStatus.FAILED, error="stopped")

    monkeypatch.setattr(run_eval.time, "sleep", the_next_poll_finds_it_failed)
    with pytest.raises(CommandError, match="Generation failed"):
        call_command(
            "run_eval",
            *("--project", "support", "--dataset-version", str(version.number), "--candidates", "base,prompt"),
            *("--base-model", base.name, "--wait", "--timeout", "600"),
        )
    assert "No worker has answered for 25 minutes. Still waiting" in capsys.readouterr().out


@pytest.mark.django_db
def test_the_experiment_page_says_no_worker_has_answered(team):
    from apps.experiments import services as experiments
    from apps.experiments.models import Experiment
    from tests.experiments_setup import experiment_setup

    _, base, rubric, version = experiment_setup(team)
    experiment = experiments.launch_experiment(
        project=team.project, versions=[version], fractions=[0.5, 1.0], base_model=base, rubric=rubric, user=team.pm
    )
    worker_last_seen(minutes_ago=25)
    page = team.client("pm").get(experiment.get_absolute_url()).content.decode()
    assert "No worker has answered for 25 minutes." in page
    fleet.beat(hostname="celery@laptop", queues=["default", "gpu"], gpus=(0, 0))
    assert 'id="worker-silence"' not in team.client("pm").get(experiment.get_absolute_url()).content.decode()
    assert Experiment.objects.get(pk=experiment.pk).status == "running"
