"""One real small experiment end to end: the tiny model trains on two nested subsets through the runs' own task,
each run is evaluated by its automatic-only evaluation and checked, the experiment finishes by itself (task
signals, tasks inline) and the command prints the table and the slope last."""

from __future__ import annotations

import re

import pytest
from django.core.management import call_command

from apps.evaluations import services as eval_services
from apps.evaluations.models import CheckResult, EvaluationStatus, Scale
from apps.experiments.models import Experiment, ExperimentStatus, Point
from apps.runs.models import RunStatus
from tests import runs_setup
from tests.factories import make_dataset_version
from worker.checks import CheckSpec

tiny_base_model = runs_setup.tiny_base_model
pytestmark = pytest.mark.django_db(transaction=True)  # tasks are sent after real commits, as in production


def test_a_small_scaling_experiment_runs_end_to_end(team, settings, tiny_base_model, eager, tmp_path, capsys):
    settings.MEDIA_ROOT = str(tmp_path)
    settings.FTSTUDIO_EXPERIMENT_MIN_TRAIN = 4
    eval_services.create_rubric(
        project=team.project,
        name="House style",
        criteria=[
            eval_services.CriterionSpec(
                "Greets", "", Scale.PASS_FAIL, {"1": "yes", "0": "no"}, checks=[CheckSpec("starts_with", "Hi")]
            )
        ],
    )
    conversations = runs_setup.support_conversations
    version = make_dataset_version(
        team.project, {"train": conversations(16), "val": conversations(2, 50), "test": conversations(3, 70)}
    )
    call_command(
        "scaling_experiment",
        "--project",
        team.project.slug,
        "--dataset-version",
        str(version.number),
        "--fractions",
        "0.25,0.5,1",
        "--base-model",
        tiny_base_model.name,
        "--wait",
        "--timeout",
        "600",
    )
    lines = capsys.readouterr().out.strip().splitlines()
    experiment = Experiment.objects.get()
    assert experiment.status == ExperimentStatus.FINISHED
    points = list(
        Point.objects.filter(arm__experiment=experiment).select_related("run", "evaluation").order_by("n_train")
    )
    assert [p.n_train for p in points] == [4, 8, 16]
    assert all(p.run.status == RunStatus.SUCCEEDED for p in points), [p.run.error for p in points]
    assert all(p.evaluation.status == EvaluationStatus.READY and p.evaluation.done == 3 for p in points)
    assert CheckResult.objects.filter(generation__candidate__evaluation__in=[p.evaluation for p in points]).count() == 9
    assert sum("  scored  " in line for line in lines) == 3  # the table's three rows, each in stage "scored"
    assert re.fullmatch(r"slope=-?\d+\.\d{4}", lines[-1]), lines[-1]
