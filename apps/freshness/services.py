"""Re-evaluating on current data: a new evaluation with the same candidates (chosen runs and the baselines) on a
newer dataset version's test split, through ``evaluations.services.create_evaluation``."""

from __future__ import annotations

from apps.datasets.models import DatasetVersion
from apps.evaluations.models import CandidateKind, Evaluation, EvaluationPurpose, Rubric
from apps.evaluations.services import CandidateSpec, EvaluationError, create_evaluation
from apps.runs.models import Run, RunStatus


class ReevaluateError(EvaluationError):
    """Input a user can fix; nothing was launched."""


def runs_to_reevaluate(project, dataset_version: DatasetVersion):
    """Finished runs trained on an older version than ``dataset_version`` and not yet evaluated on it."""
    evaluated = set(
        Evaluation.objects.filter(project=project, dataset_version=dataset_version)
        .exclude(status="failed")
        .exclude(purpose=EvaluationPurpose.COLLECT)  # on training examples: evaluates nothing
        .values_list("candidates__run_id", flat=True)
    )
    return (
        Run.objects.filter(
            project=project, status=RunStatus.SUCCEEDED, dataset_version__number__lt=dataset_version.number
        )
        .exclude(adapter_path="")
        .exclude(pk__in=[pk for pk in evaluated if pk])
        .order_by("pk")
    )


def reevaluate(
    *, project, dataset_version: DatasetVersion, run_ids: list[int] | None = None, user=None, enqueue: bool = True
) -> Evaluation:
    """Evaluate ``run_ids`` (default: every finished run not yet evaluated on this version) and the baselines of
    their latest evaluation on ``dataset_version``'s test split, with the newest version of that evaluation's
    rubric. Raises ``ReevaluateError`` (nothing created) on bad input."""
    if dataset_version.project_id != project.pk:
        raise ReevaluateError("That dataset version belongs to another project.")
    if not dataset_version.items.filter(split="test").exists():
        raise ReevaluateError(
            f"Dataset version v{dataset_version.number} has no test split: there is nothing to "
            "re-evaluate on. Freeze a version with test examples."
        )
    if run_ids is None:
        runs = list(runs_to_reevaluate(project, dataset_version))
        if not runs:
            raise ReevaluateError(
                f"No finished run needs re-evaluating on v{dataset_version.number}: every run was "
                "trained on it or evaluated on it already. Name runs to evaluate them again."
            )
    else:
        found = {r.pk: r for r in Run.objects.filter(project=project, pk__in=run_ids)}
        missing = [pk for pk in run_ids if pk not in found]
        if missing:
            raise ReevaluateError(f"Run #{missing[0]} is not a run of this project.")
        runs = [found[pk] for pk in dict.fromkeys(run_ids)]
    source = (
        Evaluation.objects.filter(project=project, candidates__run__in=runs)
        .select_related("rubric", "base_model")
        .order_by("-created_at", "-pk")
        .first()
        or Evaluation.objects.filter(project=project)
        .select_related("rubric", "base_model")
        .order_by("-created_at", "-pk")
        .first()
    )
    candidates = _baselines(project, source) + [CandidateSpec(CandidateKind.RUN, run_id=r.pk) for r in runs]
    rubric = _current_rubric(project, source)
    if rubric is None:
        raise ReevaluateError("This project has no rubric yet: write one before evaluating.")
    options = {}
    if source is not None:
        options = {
            "base_model": source.base_model,
            "max_new_tokens": source.max_new_tokens,
            "seed": source.seed,
            "reviewers_per_pair": source.reviewers_per_pair,
            "pair_cap": source.pair_cap,
            "stop_when_settled": source.stop_when_settled,
            "reviewers_see_examples": source.reviewers_see_examples,
        }
    return create_evaluation(
        project=project,
        dataset_version=dataset_version,
        rubric=rubric,
        candidates=candidates,
        name=f"Re-evaluation on v{dataset_version.number}",
        user=user,
        enqueue=enqueue,
        **options,
    )


def _baselines(project, source: Evaluation | None) -> list[CandidateSpec]:
    """The source evaluation's base and prompt candidates, as they were; else the base model and the best prompt."""
    if source is not None:
        return [
            CandidateSpec(c.kind, system_prompt=c.system_prompt, few_shot=c.few_shot, shots=list(c.shot_messages))
            for c in source.candidates.order_by("position")
            if c.kind != CandidateKind.RUN
        ]
    from apps.prompts.selectors import best_prompt_version

    best = best_prompt_version(project)
    prompt = (
        CandidateSpec(
            CandidateKind.PROMPT,
            system_prompt=best.system_prompt,
            few_shot=len(best.shot_messages),
            shots=best.shot_messages,
        )
        if best
        else CandidateSpec(CandidateKind.PROMPT, few_shot=2)
    )
    return [CandidateSpec(CandidateKind.BASE), prompt]


def _current_rubric(project, source: Evaluation | None) -> Rubric | None:
    rubrics = Rubric.objects.filter(project=project)
    if source is not None:
        return rubrics.filter(name=source.rubric.name).order_by("-version").first()
    return rubrics.order_by("-created_at", "-pk").first()
