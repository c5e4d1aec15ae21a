"""Prompt workspace writes: saving a numbered prompt version and scoring it on the validation split.

Scoring runs on the worker (task ``prompts.score_prompt_version``, queue ``gpu``) through the same generation
path as an evaluation's prompt-only baseline: ``evaluations.generation.candidate_messages`` builds the
conversation (system prompt, few-shot turns, input) and ``worker.generate`` generates in batches. Each output
is scored by similarity to the ideal (``statistics.token_f1``, as evaluations do) and by the rubric's
automatic checks (``worker.checks``).
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from apps.datasets.models import DatasetVersion, DatasetVersionItem
from apps.evaluations.models import AutoCheck, Candidate, CandidateKind, Rubric
from apps.runs import leases
from apps.runs.models import BaseModel, ReaperBeat
from ftstudio.queueing import send_after_commit

from .models import PromptOutput, PromptStatus, PromptVersion
from .tasks import score_prompt_version as score_task

log = logging.getLogger(__name__)

MAX_SHOTS = 8


class PromptError(ValueError):
    """Input a user can fix; the message says what and why."""


@transaction.atomic
def create_prompt_version(
    *,
    project,
    dataset_version: DatasetVersion,
    system_prompt: str,
    shot_positions: list[int],
    base_model: BaseModel | None = None,
    rubric: Rubric | None = None,
    note: str = "",
    max_new_tokens: int = 96,
    user=None,
    enqueue: bool = True,
) -> PromptVersion:
    """Save the next numbered prompt version and queue its scoring on ``dataset_version``'s validation split."""
    if dataset_version.project_id != project.pk:
        raise PromptError("That dataset version belongs to another project.")
    system_prompt = system_prompt.strip()
    if not system_prompt:
        raise PromptError("Write a system prompt: it is what this version tries.")
    positions = list(dict.fromkeys(int(p) for p in shot_positions))
    if len(positions) > MAX_SHOTS:
        raise PromptError(
            f"Pick at most {MAX_SHOTS} few-shot examples (you picked {len(positions)}): "
            "each one lengthens every prompt."
        )
    val_count = dataset_version.items.filter(split="val").count()
    if not val_count:
        raise PromptError(
            f"Dataset version v{dataset_version.number} has no validation examples to score a prompt on; "
            "freeze a version with a validation split."
        )
    shots = {i.position: i.messages for i in dataset_version.items.filter(split="train", position__in=positions)}
    missing = [p for p in positions if p not in shots]
    if missing:
        raise PromptError(
            f"Example #{missing[0]} is not in the train split of v{dataset_version.number}: few-shot "
            "examples come from the train split only (never from what the prompt is scored on)."
        )
    if rubric is not None and rubric.project_id != project.pk:
        raise PromptError("That rubric belongs to another project.")
    if not 1 <= max_new_tokens <= 2048:
        raise PromptError("Max new tokens must be between 1 and 2048.")
    base_model = base_model or BaseModel.objects.order_by("name").first()
    if base_model is None:
        raise PromptError("No base model is registered yet.")
    number = (
        PromptVersion.objects.select_for_update().filter(project=project).aggregate(n=Max("number"))["n"] or 0
    ) + 1
    version = PromptVersion.objects.create(
        project=project,
        number=number,
        dataset_version=dataset_version,
        base_model=base_model,
        rubric=rubric,
        system_prompt=system_prompt,
        shot_positions=positions,
        shot_messages=[shots[p] for p in positions],
        note=note.strip()[:200],
        max_new_tokens=max_new_tokens,
        total=val_count,
        created_by=user,
    )
    if enqueue:
        send_scoring(version)
    return version


def send_scoring(version: PromptVersion) -> None:
    """Queue the version's scoring (once the transaction commits) and note when, for the reaper."""
    PromptVersion.objects.filter(pk=version.pk).update(enqueued_at=timezone.now())
    send_after_commit(score_task, version.pk)


def prompt_messages(version: PromptVersion, input_messages: list[dict]) -> list[dict]:
    """What the model is asked: the evaluations' prompt-baseline conversation, with this version's shots."""
    from apps.evaluations.generation import candidate_messages

    candidate = Candidate(
        kind=CandidateKind.PROMPT,
        system_prompt=version.system_prompt,
        few_shot=len(version.shot_messages),
        shot_messages=version.shot_messages,
    )
    return candidate_messages(candidate, input_messages, version.shot_messages)


def score_outputs(
    version: PromptVersion, items: list[DatasetVersionItem], texts: list[str], latencies: list[float] | None = None
) -> list[PromptOutput]:
    """Score outputs against their items (similarity and the rubric's automatic checks) and store them;
    outputs stored already are kept."""
    from apps.evaluations.statistics import token_f1
    from worker.checks import input_fields, run_check

    checks = (
        list(
            AutoCheck.objects.filter(criterion__rubric=version.rubric_id)
            .select_related("criterion")
            .order_by("criterion__position", "position")
        )
        if version.rubric_id
        else []
    )
    rows = []
    for n, (item, text) in enumerate(zip(items, texts, strict=True)):
        similarity = token_f1(text, item.ideal_output)
        fields = input_fields(item.input_messages, item.example.metadata if item.example_id else None)
        results = []
        for check in checks:
            r = run_check(check.spec, text, fields=fields, ideal=item.ideal_output, similarity=similarity)
            results.append(
                {"criterion": check.criterion.name, "check": check.label, "passed": r.passed, "detail": r.detail[:300]}
            )
        rows.append(
            PromptOutput(
                prompt_version=version,
                item=item,
                output=text,
                similarity=similarity,
                checks=results,
                passed_all=all(r["passed"] for r in results) if results else None,
                latency_ms=latencies[n] if latencies else 0,
            )
        )
    PromptOutput.objects.bulk_create(rows, ignore_conflicts=True)
    return rows


def finish_scoring(version: PromptVersion, *, rows=None) -> bool:
    """Aggregate the stored outputs into the version's scores and mark it scored (only through ``rows``, the
    lease's rows, when given); False when they match no row (another worker took the version over)."""
    outputs = list(version.outputs.all())
    summary: dict[str, list[int]] = {}
    for o in outputs:
        for c in o.checks:
            passed, checked = summary.setdefault(c["criterion"], [0, 0])
            summary[c["criterion"]] = [passed + int(c["passed"]), checked + 1]
    has_checks = any(o.passed_all is not None for o in outputs)
    return version.mark_scored(
        rows=rows,
        mean_similarity=sum(o.similarity for o in outputs) / len(outputs) if outputs else 0.0,
        checks_passed=sum(1 for o in outputs if o.passed_all) if has_checks else None,
        check_summary=summary,
        done=len(outputs),
    )


class _Lost(Exception):
    """Another worker took the version over: this delivery stops and writes nothing more."""


def claim_scoring(version_pk: int, owner: str) -> PromptVersion | None:
    """Mark a version as running under ``owner`` unless it is scored or a live worker holds it (the runs' and
    evaluations' rule, ``apps/runs/leases.py``)."""
    with transaction.atomic():
        version = (
            PromptVersion.objects.select_for_update()
            .select_related("base_model", "dataset_version")
            .filter(pk=version_pk)
            .first()
        )
        if version is None or version.status == PromptStatus.SCORED:
            return None
        now = timezone.now()
        if version.status == PromptStatus.RUNNING and not version.owner_gone(now):
            log.info(
                "Prompt version %s is scored by live worker %s; skipping this delivery", version_pk, version.worker_id
            )
            return None
        version.mark_running(owner=owner, now=now)
        return version


def run_scoring(version_pk: int, *, batch_size: int = 16) -> PromptVersion | None:
    """Generate and score every missing output of a prompt version; safe to run twice (a scored version, or one
    a live worker holds, is left alone; stored outputs are not generated again). A heartbeat thread keeps the
    claim fresh; a worker that lost it to another stops after its batch."""
    from apps.runs.artifacts import base_model_dir
    from apps.runs.execution import failure_message
    from worker.generate import GenerationConfig, generate
    from worker.models import load_generator

    owner = leases.new_owner_id()
    version = claim_scoring(version_pk, owner)
    if version is None:
        return PromptVersion.objects.filter(pk=version_pk).first()
    with leases.Lease(PromptVersion, version.pk, owner) as lease:
        rows = lease.rows()

        def check() -> None:
            if lease.lost.is_set() or not rows.exists():
                lease.lost.set()
                raise _Lost

        try:
            items = list(
                version.dataset_version.items.filter(split="val").select_related("example").order_by("position")
            )
            have = set(version.outputs.values_list("item_id", flat=True))
            todo = [i for i in items if i.pk not in have]
            if todo:
                model, tokenizer = load_generator(base_model_dir(version.base_model))
                config = GenerationConfig(max_new_tokens=version.max_new_tokens, batch_size=batch_size, seed=0)

                def save(indices, results):
                    check()
                    score_outputs(
                        version, [todo[i] for i in indices], [r.text for r in results], [r.latency_ms for r in results]
                    )
                    rows.update(done=version.outputs.count(), heartbeat_at=timezone.now())

                generate(
                    model, tokenizer, [prompt_messages(version, i.input_messages) for i in todo], config, on_batch=save
                )
            check()
            if not finish_scoring(version, rows=rows):
                raise _Lost
            return version
        except _Lost:
            log.warning("Prompt version %s was taken over by another worker: this one stopped", version_pk)
            return None
        except Exception as exc:  # noqa: BLE001 - shown on the version's page, logged with context
            if lease.lost.is_set():
                log.warning("Prompt version %s failed after another worker took it over: %s", version_pk, exc)
                return None
            log.exception("Scoring prompt version %s failed", version_pk)
            version.mark_failed(failure_message(exc), rows=rows)
            raise


def reap() -> dict[str, list[int]]:
    """Prompts' periodic recovery pass (`prompts.reap`); records that it ran (the staff alarm reads it)."""
    now = timezone.now()
    return ReaperBeat.record("prompts", reap_prompt_scoring(now), now)


def reap_prompt_scoring(now=None) -> dict[str, list[int]]:
    """Re-send running versions
    whose worker is gone (failed after MAX_ATTEMPTS, outputs kept) and queued ones whose message is older than
    FTSTUDIO_REQUEUE_AFTER_SECONDS (a lost message). A duplicate message is harmless: the claim lets one run."""
    from apps.runs.execution import MAX_ATTEMPTS

    def give_up(version: PromptVersion) -> None:
        version.mark_failed(
            f"The worker stopped {version.attempts} times (attempt limit {MAX_ATTEMPTS}); the outputs scored so "
            "far are kept: save the prompt again to retry.",
            rows=PromptVersion.objects.filter(pk=version.pk, status=PromptStatus.RUNNING),
        )

    stale, queued = leases.resend_silent_and_lost(
        PromptVersion.objects.filter(status=PromptStatus.RUNNING),
        PromptVersion.objects.filter(status=PromptStatus.QUEUED),
        now or timezone.now(),
        what="Prompt version",
        max_attempts=MAX_ATTEMPTS,
        give_up=give_up,
        resend=send_scoring,
    )
    return {"prompt_versions": stale, "queued_prompt_versions": queued}
