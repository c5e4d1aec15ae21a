"""Building blocks for experiment tests: a project ready for an experiment, and fake finished runs and scored
outputs (as the worker would leave them) so an experiment can advance without a model."""

from __future__ import annotations

from apps.evaluations import automatic as eval_services_automatic
from apps.evaluations import selectors as eval_selectors
from apps.evaluations import services as eval_services
from apps.evaluations.models import EvaluationStatus, Generation, Scale
from apps.experiments.models import Point
from apps.runs.models import BaseModel, Run, RunStatus
from tests.factories import conversation, make_dataset_version
from worker.checks import CheckSpec


def experiment_setup(team):
    """A base model row (never loaded), a rubric whose one check passes replies that say 'ships', and v1: 32 train,
    1 val and 4 test examples."""
    base = BaseModel.objects.create(
        name="tiny",
        display_name="Tiny",
        source_kind="local",
        source="/nowhere",
        architecture="LlamaForCausalLM",
        context_length=512,
        has_chat_template=True,
    )
    rubric = eval_services.create_rubric(
        project=team.project,
        name="House style",
        criteria=[
            eval_services.CriterionSpec(
                "Facts",
                "States the facts",
                Scale.PASS_FAIL,
                {"1": "yes", "0": "no"},
                checks=[CheckSpec("contains", "ships")],
            )
        ],
    )
    version = make_dataset_version(
        team.project,
        {
            "train": [conversation(f"Question {i}", f"Hi,\nAnswer {i}.\nBye") for i in range(32)],
            "val": [conversation("Val", "Hi,\nVal.\nBye")],
            "test": [conversation(f"Where is #{i}?", f"Hi,\n#{i} ships today.\nBye") for i in range(4)],
        },
    )
    return team, base, rubric, version


def finish_runs(experiment, status=RunStatus.SUCCEEDED):
    for point in Point.objects.filter(arm__experiment=experiment).select_related("run"):
        Run.objects.filter(pk=point.run_id).update(status=status, adapter_path="/fake/adapter")


def fake_scores(point, passing: int, similarity: float) -> None:
    """Outputs as generation would store them: ``passing`` of the test items say 'ships', then the real checks."""
    evaluation = point.evaluation
    candidate = evaluation.candidates.get()
    items = list(eval_selectors.eval_items(evaluation))
    Generation.objects.bulk_create(
        [
            Generation(
                candidate=candidate,
                item=item,
                output="It ships today." if k < passing else "No idea.",
                similarity=similarity,
            )
            for k, item in enumerate(items)
        ]
    )
    type(evaluation).objects.filter(pk=evaluation.pk).update(status=EvaluationStatus.READY, done=len(items))
    eval_services_automatic.run_checks(evaluation.pk)
