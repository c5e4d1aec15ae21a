"""Evaluation services (writes): rubrics and creating evaluations (generation.py, automatic.py, review.py: the rest)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from django.db import transaction

from apps.datasets.models import DatasetVersion, Example
from apps.runs.models import BaseModel, Run, RunStatus
from ftstudio.queueing import send_after_commit

from .models import (
    SCALE_VALUES,
    AutoCheck,
    Candidate,
    CandidateKind,
    Criterion,
    Evaluation,
    EvaluationPurpose,
    ReviewMode,
    Rubric,
    Scale,
    Unblinding,
    UnblindingReason,
)
from .selectors import eval_items
from .tasks import generate_outputs


class EvaluationError(ValueError):
    """Input a user can fix; the message says what and why."""


# --- rubrics ------------------------------------------------------------------------------------------
@dataclass
class CriterionSpec:
    name: str
    description: str = ""
    scale: str = Scale.LIKERT5
    anchors: dict | None = None
    good_example_id: int | None = None
    bad_example_id: int | None = None
    checks: list = dataclasses.field(
        default_factory=list
    )  # worker.checks.CheckSpec, run on every output of an evaluation


def _check_criteria(project, criteria: list[CriterionSpec]) -> None:
    if not criteria:
        raise EvaluationError("A rubric needs at least one criterion.")
    seen: set[str] = set()
    for n, spec in enumerate(criteria, start=1):
        if not spec.name.strip():
            raise EvaluationError(f"Criterion {n} has no name.")
        if spec.name.strip().lower() in seen:
            raise EvaluationError(f"Criterion {n}: the name {spec.name!r} is used twice.")
        seen.add(spec.name.strip().lower())
        if spec.scale not in Scale.values:
            raise EvaluationError(
                f"Criterion {n} ({spec.name}): unknown scale {spec.scale!r}; use pass_fail or likert5."
            )
        allowed = {str(v) for v in SCALE_VALUES[spec.scale]}
        extra = set((spec.anchors or {}).keys()) - allowed
        if extra:
            raise EvaluationError(
                f"Criterion {n} ({spec.name}): anchor levels {sorted(extra)} are not on the "
                f"{Scale(spec.scale).label} scale (levels {sorted(allowed)})."
            )
        for field in ("good_example_id", "bad_example_id"):
            pk = getattr(spec, field)
            if pk is not None and not Example.objects.filter(project=project, pk=pk).exists():
                raise EvaluationError(
                    f"Criterion {n} ({spec.name}): example #{pk} ({field.split('_')[0]} example) "
                    "is not an example of this project."
                )
        for m, check in enumerate(spec.checks, start=1):
            from worker.checks import CheckError, validate

            try:
                validate(check)
            except CheckError as exc:
                raise EvaluationError(f"Criterion {n} ({spec.name}), automatic check {m}: {exc}.") from exc
    from .graders import check_graders_problem

    problem = check_graders_problem(criteria)
    if problem:
        raise EvaluationError(problem)


def _save_criteria(rubric: Rubric, criteria: list[CriterionSpec]) -> None:
    for i, s in enumerate(criteria):
        criterion = Criterion.objects.create(
            rubric=rubric,
            position=i,
            name=s.name.strip(),
            description=s.description.strip(),
            scale=s.scale,
            anchors={k: v.strip() for k, v in (s.anchors or {}).items() if v and v.strip()},
            good_example_id=s.good_example_id,
            bad_example_id=s.bad_example_id,
        )
        AutoCheck.objects.bulk_create(
            [
                AutoCheck(criterion=criterion, position=j, kind=c.kind, text=c.text, number=c.number, weight=c.weight)
                for j, c in enumerate(s.checks)
            ]
        )


def _check_review_mode(review_mode: str) -> None:
    if review_mode not in ReviewMode.values:
        raise EvaluationError(f"Unknown review mode {review_mode!r}; use {' or '.join(ReviewMode.values)}.")


@transaction.atomic
def create_rubric(
    *,
    project,
    name: str,
    description: str = "",
    criteria: list[CriterionSpec],
    review_mode: str = ReviewMode.SCORES,
    user=None,
) -> Rubric:
    name = name.strip()
    if not name:
        raise EvaluationError("A rubric needs a name.")
    if Rubric.objects.filter(project=project, name=name).exists():
        raise EvaluationError(f"A rubric named {name!r} exists already; edit it to make a new version.")
    _check_criteria(project, criteria)
    _check_review_mode(review_mode)
    rubric = Rubric.objects.create(
        project=project, name=name, version=1, description=description.strip(), review_mode=review_mode, created_by=user
    )
    _save_criteria(rubric, criteria)
    return rubric


@transaction.atomic
def revise_rubric(
    *, rubric: Rubric, description: str, criteria: list[CriterionSpec], review_mode: str | None = None, user=None
) -> Rubric:
    """Editing never changes a version evaluations point at: it saves the next version."""
    _check_criteria(rubric.project, criteria)
    review_mode = review_mode or rubric.review_mode
    _check_review_mode(review_mode)
    latest = (
        Rubric.objects.select_for_update().filter(project=rubric.project, name=rubric.name).order_by("-version").first()
    )
    new = Rubric.objects.create(
        project=rubric.project,
        name=rubric.name,
        version=latest.version + 1,
        description=description.strip(),
        review_mode=review_mode,
        created_by=user,
    )
    _save_criteria(new, criteria)
    return new


def criteria_specs(rubric: Rubric) -> list[CriterionSpec]:
    return [
        CriterionSpec(
            name=c.name,
            description=c.description,
            scale=c.scale,
            anchors=dict(c.anchors),
            good_example_id=c.good_example_id,
            bad_example_id=c.bad_example_id,
            checks=[check.spec for check in c.auto_checks.all()],
        )
        for c in rubric.criteria.prefetch_related("auto_checks")
    ]


# --- creating an evaluation ---------------------------------------------------------------------------
@dataclass
class CandidateSpec:
    kind: str
    run_id: int | None = None
    system_prompt: str = ""
    few_shot: int = 0
    shots: list = dataclasses.field(
        default_factory=list
    )  # chosen conversations (a prompt version's); else the first few_shot


def parse_candidates(text: str) -> list[CandidateSpec]:
    """``base,prompt,run:12`` -> candidate specs (the run_eval command's syntax)."""
    specs = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        if part == "base":
            specs.append(CandidateSpec("base"))
        elif part == "prompt":
            specs.append(CandidateSpec("prompt"))
        elif part.startswith("run:") and part[4:].isdigit():
            specs.append(CandidateSpec("run", run_id=int(part[4:])))
        else:
            raise EvaluationError(f"Unknown candidate {part!r}: use base, prompt or run:ID (e.g. base,prompt,run:3).")
    return specs


DEFAULT_PROMPT = "You are a helpful customer-support assistant. Reply in the house style shown in the examples."


def _check_evaluation(
    *,
    project,
    dataset_version: DatasetVersion,
    rubric: Rubric,
    candidates: list[CandidateSpec],
    max_new_tokens: int,
    reviewers_per_pair: int,
    pair_cap: int | None,
    automatic_only: bool = False,
    purpose: str = EvaluationPurpose.JUDGE,
) -> dict[int, Run]:
    """Refuse what cannot be evaluated, saying why; returns the candidates' runs by id."""
    if dataset_version.project_id != project.pk:
        raise EvaluationError("That dataset version belongs to another project.")
    if rubric.project_id != project.pk:
        raise EvaluationError("That rubric belongs to another project.")
    if purpose not in EvaluationPurpose.values:
        raise EvaluationError(f"Unknown purpose {purpose!r}: judge models or collect preferences.")
    if purpose == EvaluationPurpose.COLLECT:
        if automatic_only:
            raise EvaluationError("Collecting preferences needs reviewers: it cannot be scored automatically only.")
        if not dataset_version.items.filter(split="train").exists():
            raise EvaluationError(
                f"Dataset version v{dataset_version.number} has no training examples to collect preferences on."
            )
    elif not dataset_version.items.filter(split="test").exists():
        raise EvaluationError(f"Dataset version v{dataset_version.number} has no test examples to evaluate on.")
    if len(candidates) < (1 if automatic_only else 2):
        raise EvaluationError("Pick at least two candidates to compare.")
    if not 1 <= max_new_tokens <= 2048:
        raise EvaluationError("Max new tokens must be between 1 and 2048.")
    if not 1 <= reviewers_per_pair <= 10:
        raise EvaluationError("Reviewers per pair must be between 1 and 10.")
    if pair_cap is not None and pair_cap < 1:
        raise EvaluationError("The cap of judged items per candidate pair must be at least 1 (or empty for no cap).")
    runs: dict[int, Run] = {}
    for spec in candidates:
        if spec.kind not in CandidateKind.values:
            raise EvaluationError(f"Unknown candidate kind {spec.kind!r}.")
        if spec.kind == CandidateKind.RUN:
            run = Run.objects.select_related("base_model").filter(project=project, pk=spec.run_id).first()
            if run is None:
                raise EvaluationError(f"Run #{spec.run_id} is not a run of this project.")
            if run.status != RunStatus.SUCCEEDED or not run.adapter_path:
                raise EvaluationError(
                    f"Run #{run.pk} has not succeeded (status {run.status}): only finished runs "
                    "with an adapter can be evaluated."
                )
            if spec.run_id in runs:
                raise EvaluationError(f"Run #{run.pk} is listed twice.")
            runs[run.pk] = run
    if [s.kind for s in candidates].count("base") > 1:
        raise EvaluationError("The base model is listed twice.")
    for spec in candidates:
        if spec.kind == CandidateKind.PROMPT and spec.shots:
            leak = few_shot_leak(spec.shots, dataset_version)
            if leak:
                raise EvaluationError(leak)
    return runs


def _input_key(messages: list[dict]) -> tuple:
    """What a model is asked (every turn before the last assistant turn), whitespace- and case-insensitive."""
    turns = list(messages or [])
    for i in range(len(turns) - 1, -1, -1):
        if turns[i].get("role") == "assistant":
            turns = turns[:i]
            break
    return tuple((m.get("role"), " ".join(str(m.get("content", "")).split()).casefold()) for m in turns)


def few_shot_leak(shots: list[list[dict]], dataset_version: DatasetVersion) -> str:
    """Why a prompt baseline's few-shot examples may not be evaluated on this version ("" when they may): one of
    them has the same input as a test example, so the baseline would be shown the answer it is scored on (a
    prompt version picked its examples from an older version's train split; a later version may test them)."""
    tests: dict[tuple, int] = {}
    rows = dataset_version.items.filter(split="test").order_by("position").values_list("messages", flat=True)
    for k, messages in enumerate(rows, 1):
        tests.setdefault(_input_key(messages), k)
    for n, shot in enumerate(shots, 1):
        k = tests.get(_input_key(shot))
        if k is not None:
            asked = next((m.get("content", "") for m in reversed(shot) if m.get("role") == "user"), "")
            asked = " ".join(str(asked).split())
            return (
                f"Few-shot example {n} of the prompt-only baseline ({asked[:80]!r}"
                f"{'…' if len(asked) > 80 else ''}) has the same input as test example {k} of "
                f"{len(rows)} in v{dataset_version.number}: the baseline would be shown the answer it is "
                f"scored on. Pick a prompt version whose examples are not in v{dataset_version.number}'s "
                f"test split, or save one on v{dataset_version.number}."
            )
    return ""


def _pick_base_model(base_model: BaseModel | None, runs: dict[int, Run]) -> BaseModel:
    """The given base model, else the first tuned run's, else the first registered one."""
    if base_model is None:
        base_model = next(iter(runs.values())).base_model if runs else None
    if base_model is None:
        base_model = BaseModel.objects.order_by("name").first()
    if base_model is None:
        raise EvaluationError("No base model is registered yet.")
    return base_model


def _create_candidates(evaluation: Evaluation, candidates: list[CandidateSpec], runs: dict[int, Run]) -> None:
    prompt_count = 0
    for position, spec in enumerate(candidates):
        if spec.kind == CandidateKind.BASE:
            label = f"Base model ({evaluation.base_model})"
        elif spec.kind == CandidateKind.PROMPT:
            prompt_count += 1
            label = "Prompt-only baseline" + (f" {prompt_count}" if prompt_count > 1 else "")
        else:
            run = runs[spec.run_id]
            label = f"Tuned run #{run.pk}" + (f" ({run.name})" if run.name else "")
        Candidate.objects.create(
            evaluation=evaluation,
            position=position,
            kind=spec.kind,
            run=runs.get(spec.run_id),
            system_prompt=(spec.system_prompt.strip() or DEFAULT_PROMPT) if spec.kind == CandidateKind.PROMPT else "",
            few_shot=spec.few_shot if spec.kind == CandidateKind.PROMPT else 0,
            label=label,
            shot_messages=list(spec.shots) if spec.kind == CandidateKind.PROMPT else [],
        )


@transaction.atomic
def create_evaluation(
    *,
    project,
    dataset_version: DatasetVersion,
    rubric: Rubric,
    candidates: list[CandidateSpec],
    base_model: BaseModel | None = None,
    name: str = "",
    max_new_tokens: int = 96,
    seed: int = 0,
    reviewers_per_pair: int = 2,
    include_val: bool = False,
    reviewers_see_examples: bool = False,
    pair_cap: int | None = None,
    stop_when_settled: bool = True,
    user=None,
    enqueue: bool = True,
    automatic_only: bool = False,
    purpose: str = EvaluationPurpose.JUDGE,
) -> Evaluation:
    """Check, save the evaluation with its candidates, and queue its generation (task on queue gpu) on commit.

    ``automatic_only``: scored by the automatic metrics alone (a data-scaling experiment's point), so one
    candidate is enough and, with one, no pair goes to reviewers. ``purpose`` "collect": outputs for the train
    split, whose reviewers' verdicts become preference pairs (``preferences.harvest_preferences``); the validation
    split is never added then."""
    runs = _check_evaluation(
        project=project,
        dataset_version=dataset_version,
        rubric=rubric,
        candidates=candidates,
        max_new_tokens=max_new_tokens,
        reviewers_per_pair=reviewers_per_pair,
        pair_cap=pair_cap,
        automatic_only=automatic_only,
        purpose=purpose,
    )
    if purpose == EvaluationPurpose.COLLECT:  # every training item judged: a settled candidate pair still teaches
        include_val, stop_when_settled = False, False
    base_model = _pick_base_model(base_model, runs)
    kinds = [s.kind for s in candidates]
    evaluation = Evaluation.objects.create(
        project=project,
        name=name.strip() or f"v{dataset_version.number} · {', '.join(kinds)}",
        dataset_version=dataset_version,
        purpose=purpose,
        rubric=rubric,
        base_model=base_model,
        max_new_tokens=max_new_tokens,
        seed=seed,
        reviewers_per_pair=reviewers_per_pair,
        include_val=include_val,
        reviewers_see_examples=reviewers_see_examples,
        pair_cap=pair_cap,
        stop_when_settled=stop_when_settled,
        created_by=user,
    )
    if user is not None:  # the launcher has seen the configuration: they never judge it blind
        Unblinding.objects.create(evaluation=evaluation, user=user, reason=UnblindingReason.LAUNCHED)
    _create_candidates(evaluation, candidates, runs)
    evaluation.total = eval_items(evaluation).count() * len(candidates)
    evaluation.save(update_fields=["total"])
    if enqueue:
        send_after_commit(generate_outputs, evaluation.pk)
    return evaluation
