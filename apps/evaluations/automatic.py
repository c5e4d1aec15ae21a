"""Evaluations: the automatic scoring of outputs, by rule checks and by the LLM judge."""

from __future__ import annotations

from urllib.parse import urlparse

from django.conf import settings

from apps.runs import jobs

from . import check_tasks
from .models import (
    AutoCheck,
    CheckResult,
    Comparison,
    Evaluation,
    Generation,
    JudgeSettings,
    JudgeVerdict,
    Rubric,
)
from .services import EvaluationError


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
