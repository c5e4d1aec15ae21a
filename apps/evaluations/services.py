"""Evaluation services (writes): rubrics and their versions, creating and generating evaluations,
handing out blind review pairs and recording judgments. Reads and statistics live in ``selectors.py``."""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import urlparse

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.datasets.models import DatasetVersion, DatasetVersionItem, Example
from apps.runs import jobs, leases
from apps.runs.artifacts import base_model_dir, local_adapter_dir
from apps.runs.execution import MAX_ATTEMPTS, failure_message
from apps.runs.models import BaseModel, ReaperBeat, Run, RunStatus
from ftstudio import csv_cells
from ftstudio.queueing import send_after_commit

from . import check_tasks
from .models import (
    SCALE_VALUES,
    Assignment,
    AutoCheck,
    Candidate,
    CandidateKind,
    CheckResult,
    Comparison,
    Criterion,
    Evaluation,
    EvaluationPurpose,
    EvaluationStatus,
    Generation,
    JudgeSettings,
    JudgeVerdict,
    Judgment,
    ReviewMode,
    Rubric,
    Scale,
    Score,
    Unblinding,
    UnblindingReason,
)
from .selectors import eval_items, has_seen_labels, open_pairs, pending_assignments, sides
from .signals import checks_ended, evaluation_ready, evaluation_reviewed, generation_ended
from .statistics import token_f1
from .tasks import generate_outputs

log = logging.getLogger(__name__)


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


# --- automatic checks ---------------------------------------------------------------------------------
def schedule_checks(evaluation_pk: int) -> None:
    """Queue the automatic checks of an evaluation (queue ``default``) once the current transaction commits; their
    lease (`apps.runs.jobs`) lets the reaper send them again if their worker dies."""
    jobs.send("checks", check_tasks.run_checks, evaluation_pk)


def run_checks(evaluation_pk: int) -> int:
    """Run every automatic check of the evaluation's rubric on every output that lacks its result; safe to run
    again (existing results are kept, a second delivery finds nothing to do). Returns the results written."""
    from worker.checks import input_fields, run_check

    evaluation = Evaluation.objects.select_related("rubric").filter(pk=evaluation_pk).first()
    if evaluation is None:
        return 0
    checks = list(AutoCheck.objects.filter(criterion__rubric=evaluation.rubric_id))
    if not checks:
        return 0
    done = set(
        CheckResult.objects.filter(generation__candidate__evaluation=evaluation).values_list(
            "generation_id", "check_def_id"
        )
    )
    rows = []
    generations = (
        Generation.objects.filter(candidate__evaluation=evaluation).select_related("item__example").order_by("pk")
    )
    for generation in generations.iterator(chunk_size=500):
        todo = [c for c in checks if (generation.pk, c.pk) not in done]
        if not todo:
            continue
        item = generation.item
        fields = input_fields(item.input_messages, item.example.metadata if item.example_id else None)
        for check in todo:
            result = run_check(
                check.spec, generation.output, fields=fields, ideal=item.ideal_output, similarity=generation.similarity
            )
            rows.append(
                CheckResult(generation=generation, check_def=check, passed=result.passed, detail=result.detail[:300])
            )
    CheckResult.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
    return len(rows)


# --- the LLM judge ------------------------------------------------------------------------------------
def save_judge_settings(
    *,
    project,
    base_url: str,
    model: str,
    api_key: str = "",
    timeout_s: float = 60.0,
    min_human_pairs: int = 30,
    min_kappa: float = 0.6,
) -> JudgeSettings:
    """The project's judge endpoint; an empty ``api_key`` keeps the stored one (it is never shown back) unless the URL
    changed: the key is never sent to another endpoint than the one it was given for. Public addresses only (the
    webhooks' SSRF check)."""
    from worker.outbound import OutboundRefused, public_address

    base_url = base_url.strip()
    parsed = urlparse(base_url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise EvaluationError(f"The judge's URL must start with http:// or https:// (got {base_url!r}).")
    if not settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE:
        try:
            public_address(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
        except OutboundRefused as exc:
            raise EvaluationError(f"{exc} The judge must be on a public address.") from None
    if not model.strip():
        raise EvaluationError("Name the judge's model (as the endpoint knows it).")
    if not 0 < timeout_s <= 600:
        raise EvaluationError("The judge's timeout must be between 0 and 600 seconds.")
    if not -1 <= min_kappa <= 1:
        raise EvaluationError("The kappa threshold must be between -1 and 1.")
    settings_row, _ = JudgeSettings.objects.get_or_create(
        project=project, defaults={"base_url": base_url, "model": model}
    )
    if not api_key and settings_row.api_key and settings_row.base_url != base_url:
        raise EvaluationError("The judge's URL changed: enter its API key again (a stored key is not sent elsewhere).")
    settings_row.base_url, settings_row.model = base_url, model.strip()
    if api_key:
        settings_row.api_key = api_key
    settings_row.timeout_s, settings_row.min_human_pairs, settings_row.min_kappa = timeout_s, min_human_pairs, min_kappa
    settings_row.save()
    return settings_row


def judge_rubric_text(rubric: Rubric) -> str:
    from worker.judge import rubric_text

    return rubric_text(
        [
            {
                "name": c.name,
                "description": c.description,
                "levels": [(label, text) for _, label, text in c.levels()],
                "good": c.good_example.ideal_output if c.good_example_id else "",
                "bad": c.bad_example.ideal_output if c.bad_example_id else "",
            }
            for c in rubric.criteria.select_related("good_example", "bad_example")
        ],
        rubric.description,
    )


def schedule_judge(evaluation_pk: int) -> None:
    jobs.send("judge", check_tasks.run_judge, evaluation_pk)  # held like the checks


def run_judge(evaluation_pk: int, *, client=None) -> dict:
    """Ask the project's judge about every comparison without a usable verdict (both orders each); safe to run
    again: judged comparisons are skipped, unjudged ones (timeout, error, no verdict) are retried."""
    from worker.judge import JudgeConfig, judge_pair

    evaluation = Evaluation.objects.select_related("rubric", "project").get(pk=evaluation_pk)
    settings_row = JudgeSettings.objects.filter(project=evaluation.project_id).first()
    if settings_row is None:
        raise EvaluationError("This project has no LLM judge configured.")
    config = JudgeConfig(
        settings_row.base_url,
        settings_row.model,
        settings_row.api_key,
        timeout_s=settings_row.timeout_s,
        allow_private=settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE,
    )
    rubric = judge_rubric_text(evaluation.rubric)
    done = set(JudgeVerdict.objects.filter(evaluation=evaluation, judged=True).values_list("comparison_id", flat=True))
    outputs = {
        (g.candidate_id, g.item_id): g.output for g in Generation.objects.filter(candidate__evaluation=evaluation)
    }
    counts = {"judged": 0, "unjudged": 0}
    for comparison in (
        Comparison.objects.filter(evaluation=evaluation)
        .exclude(pk__in=done)
        .select_related("item")
        .order_by("order_key")
    ):
        item = comparison.item
        text = "\n\n".join(f"{m.get('role')}: {m.get('content', '')}" for m in item.input_messages)
        verdict = judge_pair(
            config,
            rubric=rubric,
            input_text=text,
            first=outputs.get((comparison.candidate_1_id, item.pk), ""),
            second=outputs.get((comparison.candidate_2_id, item.pk), ""),
            client=client,
        )
        winner = {"first": comparison.candidate_1_id, "second": comparison.candidate_2_id}.get(verdict.winner or "")
        row, _ = JudgeVerdict.objects.get_or_create(comparison=comparison, defaults={"evaluation": evaluation})
        row.judged, row.winner_id, row.position_consistent = (
            verdict.winner is not None,
            winner,
            verdict.position_consistent,
        )
        row.reasoning, row.error, row.attempts = verdict.reasoning, verdict.error[:300], row.attempts + 1
        row.save()
        counts["judged" if row.judged else "unjudged"] += 1
    return counts


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


# --- generation ---------------------------------------------------------------------------------------
def candidate_messages(candidate: Candidate, input_messages: list[dict], shots: list[list[dict]]) -> list[dict]:
    """What a candidate is asked: the input as is, or (prompt baseline) system prompt + few-shot turns + input."""
    if candidate.kind != CandidateKind.PROMPT:
        return list(input_messages)
    own_system = [m["content"] for m in input_messages if m.get("role") == "system"]
    system = "\n\n".join([candidate.system_prompt, *own_system]).strip()
    pool = candidate.shot_messages or shots  # a prompt version's chosen examples, else the train split's first ones
    turns = [m for shot in pool[: candidate.few_shot] for m in shot if m.get("role") in ("user", "assistant")]
    rest = [m for m in input_messages if m.get("role") != "system"]
    return ([{"role": "system", "content": system}] if system else []) + turns + rest


def claim_generation(evaluation_pk: int, owner: str = "") -> Evaluation | None:
    """Mark an evaluation as generating unless it is finished or a live worker holds it (the runs' rule:
    `apps/runs/leases.py`, heartbeat from a thread plus owner id)."""
    with transaction.atomic():
        evaluation = Evaluation.objects.select_for_update().filter(pk=evaluation_pk).first()
        if evaluation is None or evaluation.status == EvaluationStatus.READY:
            return None
        now = timezone.now()
        if evaluation.status == EvaluationStatus.GENERATING and not evaluation.owner_gone(now):
            log.info(
                "Evaluation %s is being generated by live worker %s; skipping this delivery",
                evaluation_pk,
                evaluation.worker_id,
            )
            return None
        evaluation.mark_generating(owner=owner, now=now)
        return evaluation


class _Handback(Exception):
    """Stops generation after a batch: ``lost`` (another worker took the evaluation over) or ``paused`` (shutdown)."""


class Generating:
    """One delivery's generation of an evaluation, written through the lease's owner-filtered rows.

    ``check`` stops it after a batch: ``lost`` when another worker took the evaluation over, ``paused`` when this
    worker is shutting down (a batch that finished during the shutdown is saved first)."""

    def __init__(self, evaluation: Evaluation, lease: leases.Lease) -> None:
        self.evaluation, self.lease, self.rows = evaluation, lease, lease.rows()

    def check(self, save_first: bool = False) -> None:
        if self.lease.lost.is_set() or not self.rows.exists():
            self.lease.lost.set()
            raise _Handback("lost")
        if leases.shutdown_requested.is_set() and not save_first:
            raise _Handback("paused")

    def done(self) -> int:
        return Generation.objects.filter(candidate__evaluation=self.evaluation).count()

    def save(self, candidate: Candidate, todo: list[DatasetVersionItem], indices, results) -> None:
        """A finished batch of one candidate's outputs (``on_batch`` of ``worker.generate.generate``)."""
        self.check(save_first=True)  # a batch finished during a shutdown is kept
        Generation.objects.bulk_create(
            [
                Generation(
                    candidate=candidate,
                    item=todo[i],
                    output=r.text,
                    prompt_tokens=r.prompt_tokens,
                    output_tokens=r.output_tokens,
                    latency_ms=r.latency_ms,
                    similarity=token_f1(r.text, todo[i].ideal_output),
                )
                for i, r in zip(indices, results, strict=True)
            ],
            ignore_conflicts=True,
        )
        self.rows.update(done=self.done(), heartbeat_at=timezone.now())
        self.check()

    def generate_missing(self, batch_size: int) -> None:
        """Every candidate's outputs for the items it has none for yet, one loaded model at a time."""
        from worker.generate import GenerationConfig, generate
        from worker.models import load_generator

        evaluation = self.evaluation
        items = list(eval_items(evaluation))
        shots = evaluation.dataset_version.conversations("train")
        config = GenerationConfig(max_new_tokens=evaluation.max_new_tokens, batch_size=batch_size, seed=evaluation.seed)
        for candidate in evaluation.candidates.select_related("run__base_model").order_by("position"):
            have = set(candidate.generations.values_list("item_id", flat=True))
            todo = [item for item in items if item.pk not in have]
            if not todo:
                continue
            self.check()
            base = candidate.run.base_model if candidate.run_id else evaluation.base_model
            model_dir = base_model_dir(base)  # fetched from the artifact store when another node registered it
            model, tokenizer = load_generator(
                model_dir, adapter_path=local_adapter_dir(candidate.run) if candidate.run_id else None
            )
            prompts = [candidate_messages(candidate, item.input_messages, shots) for item in todo]
            generate(model, tokenizer, prompts, config, on_batch=functools.partial(self.save, candidate, todo))
            del model


def run_generation(evaluation_pk: int, *, batch_size: int = 32) -> Evaluation | None:
    """Generate every missing output of an evaluation, saving after each batch; safe to run again.

    Finished (candidate, item) rows are never generated twice: a resumed task starts from what is missing.
    A background thread keeps the heartbeat fresh while a model loads or a batch runs; a worker that lost its
    claim stops after its batch and writes nothing more; a worker shutting down hands the evaluation back.
    """
    owner = leases.new_owner_id()
    evaluation = claim_generation(evaluation_pk, owner=owner)
    if evaluation is None:
        return None
    with leases.Lease(Evaluation, evaluation.pk, owner) as lease:
        job = Generating(evaluation, lease)
        try:
            job.generate_missing(batch_size)
            job.check()
            build_comparisons(evaluation)
            if evaluation.mark_ready(rows=job.rows, done=job.done()):
                schedule_checks(evaluation.pk)  # the rubric's automatic checks, on queue default
                transaction.on_commit(lambda: evaluation_ready.send(sender=Evaluation, evaluation_pk=evaluation.pk))
                announce_generation_ended(evaluation.pk)
        except _Handback as stop:
            if str(stop) == "paused" and evaluation.mark_handed_back(rows=job.rows):
                log.info("Evaluation %s handed back: the worker is shutting down", evaluation_pk)
                send_after_commit(generate_outputs, evaluation_pk)
            else:
                log.warning("Evaluation %s was taken over by another worker: this one stopped", evaluation_pk)
        except Exception as exc:  # noqa: BLE001 - recorded on the row for the PM, and logged with context
            if lease.lost.is_set():
                log.warning("Evaluation %s failed after another worker took it over: %s", evaluation_pk, exc)
                return None
            log.exception("Generation for evaluation %s failed", evaluation_pk)
            if evaluation.mark_failed(failure_message(exc), rows=job.rows):
                announce_generation_ended(evaluation.pk)
            raise
    evaluation.refresh_from_db()
    return evaluation


def announce_generation_ended(evaluation_pk: int) -> None:
    """Generation ended (ready or failed): once the transaction commits, ``generation_ended`` tells the apps above
    (experiments)."""
    transaction.on_commit(lambda: generation_ended.send(sender=Evaluation, evaluation_pk=evaluation_pk))


def announce_checks_ended(evaluation_pk: int) -> None:
    """A pass of the automatic checks ended, well or badly: ``checks_ended`` once the transaction commits."""
    transaction.on_commit(lambda: checks_ended.send(sender=Evaluation, evaluation_pk=evaluation_pk))


def send_generation(evaluation: Evaluation) -> None:
    Evaluation.objects.filter(pk=evaluation.pk).update(enqueued_at=timezone.now())
    send_after_commit(generate_outputs, evaluation.pk)


def reap() -> dict[str, list[int]]:
    """Evaluations' periodic recovery pass (`evaluations.reap`): generation, automatic checks and judge jobs whose
    worker is gone or whose message was lost are sent again. Records that it ran (the staff alarm reads it)."""
    now = timezone.now()
    result = {**reap_generations(now), **jobs.reap_jobs(now, kinds=("checks", "judge"))}
    return ReaperBeat.record("evaluations", result, now)


def reap_generations(now=None) -> dict[str, list[int]]:
    """The generation half of `reap`: re-send generating evaluations whose worker is gone
    (failed after MAX_ATTEMPTS) and queued ones whose message is older than FTSTUDIO_REQUEUE_AFTER_SECONDS."""

    def give_up(evaluation: Evaluation) -> None:
        if evaluation.mark_failed(
            f"The worker stopped {evaluation.attempts} times (attempt limit {MAX_ATTEMPTS}); finished outputs "
            "are kept: resume generation once the cause is fixed.",
            rows=Evaluation.objects.filter(pk=evaluation.pk, status=EvaluationStatus.GENERATING),
        ):
            announce_generation_ended(evaluation.pk)

    stale, queued = leases.resend_silent_and_lost(
        Evaluation.objects.filter(status=EvaluationStatus.GENERATING),
        Evaluation.objects.filter(status=EvaluationStatus.QUEUED),
        now or timezone.now(),
        what="Evaluation",
        max_attempts=MAX_ATTEMPTS,
        give_up=give_up,
        resend=send_generation,
    )
    return {"evaluations": stale, "queued_evaluations": queued}


def build_comparisons(evaluation: Evaluation) -> int:
    """Every pair of candidates on every item, in a seeded order; idempotent."""
    candidates = list(evaluation.candidates.order_by("position"))
    items = list(eval_items(evaluation).values_list("pk", flat=True))
    rows = [(item, a, b) for item in items for i, a in enumerate(candidates) for b in candidates[i + 1 :]]
    order = list(range(len(rows)))
    random.Random(evaluation.seed).shuffle(order)
    Comparison.objects.bulk_create(
        [
            Comparison(evaluation=evaluation, item_id=item, candidate_1=a, candidate_2=b, order_key=key)
            for (item, a, b), key in zip(rows, order, strict=True)
        ],
        ignore_conflicts=True,
    )
    return len(rows)


def resume_evaluation(evaluation: Evaluation) -> None:
    """Send the evaluation's generation again (once the transaction commits), whenever no live worker holds it
    (finished outputs are kept)."""
    with transaction.atomic():
        evaluation = Evaluation.objects.select_for_update().get(pk=evaluation.pk)
        if evaluation.status == EvaluationStatus.READY:
            raise EvaluationError("This evaluation has finished generating.")
        if evaluation.status == EvaluationStatus.GENERATING and not evaluation.owner_gone():
            raise EvaluationError("A worker is generating this evaluation right now.")
        send_generation(evaluation)


# --- review -------------------------------------------------------------------------------------------
# Blind means: whoever judges a pair cannot have seen which candidate wrote which output. Two rules keep it:
# nobody sees an evaluation's labels before finishing their own pairs (apps/accounts/permissions.py,
# ``evaluation_sight``), and nobody who has seen them (an ``Unblinding``) is handed its pairs.
side_rng = random.SystemRandom()  # the coin for sides; tests may swap in a seeded random.Random


def record_unblinding(*, evaluation: Evaluation, user, reason: str) -> None:
    """Note that ``user`` has seen which candidate wrote what; any pair they hold unjudged goes back to the pool."""
    with transaction.atomic():
        Unblinding.objects.get_or_create(evaluation=evaluation, user=user, defaults={"reason": reason})
        pending_assignments(evaluation, user).delete()


# How far a reviewer's sides of one candidate pair may drift from even before the next side is forced back.
# Forcing at every imbalance of one (the old rule) fixed half the sides: a reviewer who recognised one
# candidate's style guessed the next side 75% of the time. With a fair coin until the imbalance reaches this
# limit (Soares and Wu's "big stick" design), the best guess (the side owed) is right at most 0.5 + 1/(4 x 6),
# about 54%, consecutive sides correlate at about -0.07, and each candidate stays within 6 of even.
SIDE_IMBALANCE_LIMIT = 6


def side_swapped(owed: int, coin: float) -> bool:
    """Whether the next pair of a candidate pair is shown swapped (candidate_2 on side A), given ``owed`` (how
    many more times this reviewer saw its candidate_1 on side A than on B) and a uniform ``coin``: a fair coin
    while the imbalance is under the limit, else the side that brings it back."""
    if abs(owed) >= SIDE_IMBALANCE_LIMIT:
        return owed > 0
    return coin < 0.5


def _pick_pair_and_side(evaluation: Evaluation, reviewer) -> tuple[int, bool] | None:
    """The next comparison for this reviewer and whether its sides are swapped.

    Balance: per candidate pair and reviewer, each candidate is shown on side A within
    ``SIDE_IMBALANCE_LIMIT`` of as often as on B, at every point of the reviewer's list. Unpredictability: the
    side is a fair coin until that limit (:func:`side_swapped`), and a pair whose side is forced is handed out
    only when no other is open, so no side can be told from the ones seen before it beyond that bound.
    """
    balance: dict[tuple[int, int], int] = defaultdict(int)  # > 0: candidate_1 was on side A more often
    mine = Assignment.objects.filter(evaluation=evaluation, reviewer=reviewer).values_list(
        "comparison__candidate_1_id", "comparison__candidate_2_id", "swapped"
    )
    for c1, c2, swapped in mine:
        balance[(c1, c2)] += -1 if swapped else 1
    rows = list(open_pairs(evaluation, reviewer).values_list("pk", "candidate_1_id", "candidate_2_id", "n")[:60])
    if not rows:
        return None
    fewest = rows[0][3]  # pairs that have the fewest reviewers so far are filled first
    rows = [r for r in rows if r[3] == fewest]
    chosen = next((r for r in rows if abs(balance[(r[1], r[2])]) < SIDE_IMBALANCE_LIMIT), rows[0])
    return chosen[0], side_swapped(balance[(chosen[1], chosen[2])], side_rng.random())


def next_assignment(*, evaluation: Evaluation, reviewer) -> Assignment | None:
    """The reviewer's unfinished pair, or a new one: never a pair they already have, and nothing for a
    member who has seen the evaluation's labels."""
    if evaluation.status != EvaluationStatus.READY or has_seen_labels(evaluation, reviewer):
        return None
    pending = pending_assignments(evaluation, reviewer).order_by("created_at", "id").first()
    if pending is not None:
        return pending
    for _ in range(5):  # another reviewer may take the last slot of a pair between our read and write
        picked = _pick_pair_and_side(evaluation, reviewer)
        if picked is None:
            return None
        comparison_pk, swapped = picked
        try:
            with transaction.atomic():
                comparison = Comparison.objects.select_for_update().get(pk=comparison_pk)
                if comparison.assignments.count() >= evaluation.reviewers_per_pair:
                    continue
                return Assignment.objects.create(
                    comparison=comparison, evaluation=evaluation, reviewer=reviewer, swapped=swapped
                )
        except IntegrityError:
            continue
    return None


def mark_shown(assignment: Assignment) -> None:
    """The first time a reviewer's pair page is rendered: the start of the time the judgment takes."""
    if assignment.shown_at is None and assignment.completed_at is None:
        Assignment.objects.filter(pk=assignment.pk, shown_at__isnull=True).update(shown_at=timezone.now())


@transaction.atomic
def submit_judgment(
    *, assignment: Assignment, reviewer, winner: str, scores: dict[tuple[str, int], int], comment: str = ""
) -> Judgment:
    """Record a reviewer's verdict. ``winner`` is "A", "B" or "tie" as shown; ``scores`` maps
    (side letter, criterion id) to a value on that criterion's scale, each one optional; a rubric that asks
    for the overall winner only takes no scores. Stored against the candidates, with the seconds the
    judgment took (from the page being shown, else from the pair being handed out)."""
    assignment = Assignment.objects.select_for_update().select_related("comparison").get(pk=assignment.pk)
    if assignment.reviewer_id != reviewer.pk:
        raise EvaluationError("This pair is assigned to another reviewer.")
    if (
        assignment.completed_at is not None
        or Judgment.objects.filter(comparison=assignment.comparison, reviewer=reviewer).exists()
    ):
        raise EvaluationError("You have already judged this pair; a pair is judged once per reviewer.")
    by_letter = {s.letter: s.candidate for s in sides(assignment)}
    if winner not in ("A", "B", "tie"):
        raise EvaluationError(f"Pick A, B or tie (got {winner!r}).")
    rubric = assignment.evaluation.rubric
    if rubric.review_mode == ReviewMode.WINNER and scores:
        raise EvaluationError(f"Rubric {rubric} asks for the overall winner only; it takes no per-criterion scores.")
    criteria = list(rubric.criteria.all())
    rows = []
    for criterion in criteria:
        for letter in ("A", "B"):
            value = scores.get((letter, criterion.pk))
            if value is None:
                continue
            if value not in criterion.values:
                raise EvaluationError(
                    f"{value} is outside the {criterion.get_scale_display()} scale of "
                    f"{criterion.name!r} (side {letter}); allowed: {', '.join(map(str, criterion.values))}."
                )
            rows.append((criterion, by_letter[letter], value))
    unknown = {cid for _, cid in scores} - {c.pk for c in criteria}
    if unknown:
        raise EvaluationError(f"Criteria {sorted(unknown)} are not in this evaluation's rubric.")
    now = timezone.now()
    started = assignment.shown_at or assignment.created_at
    judgment = Judgment.objects.create(
        assignment=assignment,
        comparison=assignment.comparison,
        evaluation_id=assignment.evaluation_id,
        reviewer=reviewer,
        winner=None if winner == "tie" else by_letter[winner],
        comment=comment.strip()[:4000],
        seconds=max(0.0, (now - started).total_seconds()),
    )
    Score.objects.bulk_create([Score(judgment=judgment, criterion=c, candidate=cand, value=v) for c, cand, v in rows])
    assignment.completed_at = now
    assignment.save(update_fields=["completed_at"])
    transaction.on_commit(
        lambda: evaluation_reviewed.send(
            sender=Evaluation, evaluation_pk=assignment.evaluation_id, reviewer_pk=reviewer.pk
        )
    )
    return judgment


# --- export -------------------------------------------------------------------------------------------
def write_judgments_csv(evaluation: Evaluation, out) -> None:
    criteria = list(evaluation.rubric.criteria.all())
    writer = csv_cells.writer(out)
    writer.writerow(
        [
            "judgment_id",
            "item_position",
            "split",
            "reviewer",
            "candidate_1",
            "candidate_2",
            "shown_as_A",
            "winner",
            *[f"{c.name} [{n}]" for c in criteria for n in ("candidate_1", "candidate_2")],
            "comment",
            "created_at",
        ]
    )
    judgments = (
        Judgment.objects.filter(evaluation=evaluation)
        .select_related(
            "comparison__item", "comparison__candidate_1", "comparison__candidate_2", "reviewer", "winner", "assignment"
        )
        .prefetch_related("scores")
        .order_by("created_at", "id")
    )
    for j in judgments:
        c = j.comparison
        values = {(s.criterion_id, s.candidate_id): s.value for s in j.scores.all()}
        shown_a = c.candidate_2 if j.assignment.swapped else c.candidate_1
        writer.writerow(
            [
                j.pk,
                c.item.position,
                c.item.split,
                j.reviewer.username,
                c.candidate_1.label,
                c.candidate_2.label,
                shown_a.label,
                j.winner.label if j.winner else "tie",
                *[values.get((cr.pk, cand.pk), "") for cr in criteria for cand in (c.candidate_1, c.candidate_2)],
                j.comment,
                j.created_at.isoformat(),
            ]
        )
