"""Writes of the traffic page: stored completions sent into the project as draft examples."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from apps.api.selectors import run_model_id, stored_completions
from apps.datasets import quality
from apps.datasets.models import DatasetVersionItem, Example
from apps.datasets.services import CurationError, add_drafts
from apps.runs.models import Run, RunStatus

from .models import DriftWeek

log = logging.getLogger(__name__)


class TrafficError(CurationError):
    """Rows that cannot be sent; the message says why."""


def send_to_drafts(*, project, public_ids: list[str], user) -> list:
    """One draft example per stored completion: its messages, the model's answer as the starting ideal, personal
    data masked, and the completion it came from as its origin. Only the project's own completions are found."""
    rows = list(stored_completions(project).filter(public_id__in=public_ids))
    if not rows:
        raise TrafficError("Tick at least one row to send to drafts.")
    conversations = [
        (
            [*c.messages, {"role": "assistant", "content": c.answer}],
            f"served answer {c.public_id} of {c.model}",
        )
        for c in rows
    ]
    return add_drafts(project=project, conversations=conversations, user=user)


# --- a sample of traffic, reviewed blind ------------------------------------------------------------------
MAX_SAMPLE = 200


def review_sample(*, project, filters, size: int, challenger: str, rubric_id: int, user=None):
    """A blind evaluation of the served model on its ``size`` newest stored questions matching ``filters`` (those
    of the traffic page; the model filter names the served model): the questions, personal data masked, frozen as
    a test-only version derived from the served model's training version; its candidates the served model, whose
    stored answers are taken as they are, and ``challenger`` (``run:<id>``, ``base`` or ``prompt``), generated as
    every evaluation's candidates are. Returns the evaluation, queued for generation."""
    from apps.api.selectors import UnknownModel, resolve_model
    from apps.evaluations.models import Rubric
    from apps.evaluations.services import EvaluationError, parse_candidates

    from .selectors import traffic_rows

    if not filters.model:
        raise TrafficError("Choose the model to review in the Model filter first: the sample is of its answers.")
    if not 1 <= size <= MAX_SAMPLE:
        raise TrafficError(f"A sample holds 1 to {MAX_SAMPLE} questions.")
    try:
        served = resolve_model(project, filters.model)
    except UnknownModel as exc:
        raise TrafficError(str(exc)) from None
    if served.run is None or served.checkpoint_step is not None:
        raise TrafficError(f"{filters.model} is not a tuned model's final version: a sample reviews a tuned model.")
    rubric = Rubric.objects.filter(project=project, pk=rubric_id).first()
    if rubric is None:
        raise TrafficError("Choose a rubric for the reviewers (create one in Evaluations first).")
    try:
        (other,) = parse_candidates(challenger)
    except ValueError as exc:  # an EvaluationError too
        raise TrafficError(f"Choose what to compare the served answers with ({exc}).") from None
    rows = [r.completion for r in traffic_rows(project, filters, limit=size)]
    if not rows:
        raise TrafficError("No stored answers match these filters: nothing to sample.")
    rows.reverse()  # oldest first
    try:
        return _sample_evaluation(project, served.run, rows, rubric, other, user)
    except EvaluationError as exc:
        raise TrafficError(str(exc)) from None


@transaction.atomic
def _sample_evaluation(project, run, rows: list, rubric, other, user):
    from apps.datasets.versions import freeze_inputs
    from apps.evaluations.generation import send_generation
    from apps.evaluations.served import record_served_outputs
    from apps.evaluations.services import CandidateSpec, create_evaluation

    questions = [
        [{"role": m["role"], "content": quality.redact(m.get("content") or "")} for m in c.messages] for c in rows
    ]
    version = freeze_inputs(
        source=run.dataset_version,
        conversations=questions,
        user=user,
        note=f"{len(rows)} questions {rows[0].model} was asked",
    )
    evaluation = create_evaluation(
        project=project,
        dataset_version=version,
        rubric=rubric,
        candidates=[CandidateSpec("run", run_id=run.pk), other],
        name=f"Traffic sample: {len(rows)} questions to {run.name or f'run #{run.pk}'}",
        user=user,
        enqueue=False,
    )
    record_served_outputs(
        candidate=evaluation.candidates.get(position=0),
        outputs=[
            (item, quality.redact(c.answer), c.usage)
            for item, c in zip(version.items.order_by("position"), rows, strict=True)
        ],
    )
    send_generation(evaluation)
    return evaluation


# --- drift -------------------------------------------------------------------------------------------------
DRIFT_WEEKS = 8
NEIGHBOUR_SIMILARITY = 0.5  # an input this similar (estimated Jaccard of word 3-grams) to a training input is covered


def _input_shingles(messages: list[dict]) -> set[bytes]:
    return quality.shingles(quality.Item(id=0, messages=messages).input_text)


def measure_drift(*, project, now=None, weeks: int = DRIFT_WEEKS) -> list[DriftWeek]:
    """For each served run, per week of the last ``weeks``: how many stored inputs it answered have no near
    neighbour among the inputs of the version it was trained on. Replaces the weeks it measures."""
    now = now or timezone.now()
    start = now - timedelta(weeks=weeks)
    runs = {run_model_id(r): r for r in Run.objects.filter(project=project, status=RunStatus.SUCCEEDED)}
    served = (
        stored_completions(project, since=start)
        .filter(model__in=list(runs))
        .values_list("model", "messages", "created_at")
    )
    by_model: dict[str, list] = {}
    for model, messages, created_at in served.iterator(chunk_size=5000):
        by_model.setdefault(model, []).append((messages, created_at))
    saved = []
    for model, rows in by_model.items():
        run = runs[model]
        references = [
            _input_shingles(m)
            for m in DatasetVersionItem.objects.filter(version=run.dataset_version_id).values_list(
                "messages", flat=True
            )
        ]
        lonely = quality.without_near_neighbour(
            references, [_input_shingles(m) for m, _ in rows], threshold=NEIGHBOUR_SIMILARITY
        )
        counts: dict = {}
        for (_, created_at), alone in zip(rows, lonely, strict=True):
            day = timezone.localtime(created_at).date()
            week = day - timedelta(days=day.weekday())
            total, unmatched = counts.get(week, (0, 0))
            counts[week] = (total + 1, unmatched + int(alone))
        for week, (total, unmatched) in sorted(counts.items()):
            row, _ = DriftWeek.objects.update_or_create(
                run=run, week=week, defaults={"project": project, "inputs": total, "unmatched": unmatched}
            )
            saved.append(row)
    return saved


# --- distillation ------------------------------------------------------------------------------------------
JUDGE_TEACHER = "judge"  # the project's judge endpoint; any other teacher is a model id of the project (a base model)
TEACHER_MAX_TOKENS = 512


def teacher_config(project, teacher: str):
    """(JudgeConfig, extra body, name shown on drafts) for a teacher: the project's judge endpoint, or a registered
    model served by the inference process (a larger base model)."""
    from django.conf import settings

    from apps.api.selectors import UnknownModel, inference_target, resolve_model
    from apps.evaluations.models import JudgeSettings
    from worker.judge import JudgeConfig

    if teacher == JUDGE_TEACHER:
        row = JudgeSettings.objects.filter(project=project).first()
        if row is None:
            raise TrafficError("This project has no judge endpoint to use as a teacher: set one up in Evaluations.")
        config = JudgeConfig(  # an outside endpoint: the one SSRF check applies, as to the judge itself
            row.base_url,
            row.model,
            row.api_key,
            timeout_s=row.timeout_s,
            max_tokens=TEACHER_MAX_TOKENS,
            allow_private=settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE,
        )
        return config, None, row.model
    try:
        target = resolve_model(project, teacher, servable=True)
    except UnknownModel as exc:
        raise TrafficError(str(exc)) from None
    base_url = settings.FTSTUDIO_INFERENCE_URL.rstrip("/") + "/v1"
    room = min(TEACHER_MAX_TOKENS, target.base_model.context_length // 2)  # half its context for the answer
    config = JudgeConfig(  # the Studio's own inference process: internal by design, and it wants the shared secret
        base_url,
        target.id,
        settings.FTSTUDIO_INFERENCE_SECRET,
        timeout_s=settings.FTSTUDIO_INFERENCE_TIMEOUT,
        max_tokens=room,
        allow_private=True,
    )
    return (
        config,
        {
            "ftstudio": {
                **inference_target(target),
                "client": "distillation",
                "client_limit": settings.FTSTUDIO_API_MAX_CONCURRENT_PER_KEY,
            }
        },
        target.id,
    )


def _answer(client, config, messages: list[dict], extra: dict | None) -> str | None:
    """The teacher's answer, or None when it gave none (timeout, HTTP error, empty reply)."""
    import openai

    try:
        response = client.chat.completions.create(
            model=config.model, messages=messages, temperature=0, max_tokens=config.max_tokens, extra_body=extra
        )
    except openai.APIError as exc:
        log.warning("distillation: the teacher %s gave no answer: %s", config.model, exc)
        return None
    content = response.choices[0].message.content if response.choices else None
    return content or None


def distill(*, project, public_ids: list[str] = (), teacher: str, user=None, version_id: int | None = None) -> dict:
    """Ask a teacher to answer the ticked stored inputs, or the train split's inputs of a frozen dataset version
    (``version_id``; its test questions stay unseen), personal data masked before it leaves, and add each answer as
    a draft marked with the teacher's name. Safe to run again: inputs the teacher already answered are skipped."""
    from worker.judge import client_for

    if version_id is not None:
        version = frozen_version(project, version_id)
        inputs = [
            (f"v{version.number} example {item.position + 1}", item.input_messages)
            for item in version.items.filter(split="train").order_by("position")
        ]
    else:
        inputs = [(c.public_id, c.messages) for c in stored_completions(project).filter(public_id__in=public_ids)]
    config, extra, name = teacher_config(project, teacher)
    client = client_for(config)
    prefix = f"teacher {name} on "
    done = set(Example.objects.filter(project=project, origin__startswith=prefix).values_list("origin", flat=True))
    counts = {"answered": 0, "skipped": 0, "failed": 0}
    for source, asked in inputs:
        origin = prefix + source
        if origin in done:
            counts["skipped"] += 1
            continue
        messages = [{"role": m["role"], "content": quality.redact(m.get("content") or "")} for m in asked]
        answer = _answer(client, config, messages, extra)
        if answer is None:
            counts["failed"] += 1
            continue
        conversation = [*messages, {"role": "assistant", "content": answer}]
        add_drafts(project=project, conversations=[(conversation, origin)], user=user)
        counts["answered"] += 1
    return counts


def frozen_version(project, version_id):
    """A version a person froze in this project (what a teacher may answer), or TrafficError."""
    from apps.datasets.selectors import frozen_versions

    version = frozen_versions(project).filter(pk=version_id).first() if str(version_id).isdigit() else None
    if version is None:
        raise TrafficError("Choose one of this project's dataset versions for the teacher to answer.")
    if not version.items.filter(split="train").exists():
        raise TrafficError(f"v{version.number} has no training examples whose questions a teacher could answer.")
    return version
