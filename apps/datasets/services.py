"""Datasets: writes to examples (editing, labelling, drafts) and the quality report; files in importing.py."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ftstudio.queueing import send_after_commit

from . import quality
from .importers import content_hash, input_hash
from .models import (
    Example,
    ExampleRevision,
    ExampleStatus,
    FindingKind,
    QualityDismissal,
    QualityFinding,
    QualityReport,
    ReportStatus,
    Split,
)
from .tasks import quality_report_task
from .tokens import get_token_counter

SPLITS = (Split.TRAIN, Split.VAL, Split.TEST)


class CurationError(Exception):
    """A problem the user can fix; the message says what and how."""


class FreezeError(CurationError):
    pass


class ExportError(CurationError):
    pass


class EditConflict(CurationError):
    """Someone saved the example since this editor loaded it. Nothing was overwritten; both texts are kept."""

    def __init__(self, *, example: Example, yours: str, theirs: str, changed_by: str):
        self.example, self.yours, self.theirs, self.changed_by = example, yours, theirs, changed_by
        super().__init__(
            f"{changed_by} saved this example while you were editing it (it is now at revision {example.revision}). "
            "Your text was not saved and nothing was overwritten: both texts are shown, keep one or merge them, then "
            "save again."
        )


# --- editing ---------------------------------------------------------------------------------------
def _apply_change(
    *, example: Example, expected_revision: int | None, user, change: str, yours: str = "", **fields
) -> Example:
    """Save ``fields`` on the example if it is still at ``expected_revision``; keep the old state in history."""
    with transaction.atomic():
        current = Example.objects.select_for_update(of=("self",)).select_related("updated_by").get(pk=example.pk)
        if expected_revision is not None and current.revision != expected_revision:
            who = current.updated_by.username if current.updated_by else "Someone"
            raise EditConflict(example=current, yours=yours, theirs=current.ideal_output, changed_by=who)
        ExampleRevision.objects.create(
            example=current,
            revision=current.revision,
            messages=current.messages,
            status=current.status,
            split=current.split,
            changed_by=user,
            change=change[:200],
        )
        updated = Example.objects.filter(pk=current.pk, revision=current.revision).update(
            revision=F("revision") + 1, updated_by=user, updated_at=timezone.now(), **fields
        )
        if not updated:  # pragma: no cover - the row lock above makes this unreachable on PostgreSQL
            raise EditConflict(example=current, yours=yours, theirs=current.ideal_output, changed_by="Someone")
    return Example.objects.select_related("updated_by").get(pk=example.pk)


def save_ideal_output(*, example: Example, text: str, expected_revision: int, user) -> Example:
    """Replace the final assistant turn. Refused with EditConflict when the example changed since it was loaded."""
    if not text.strip():
        raise CurationError(
            "The ideal output cannot be empty: write the answer the model should give, or reject the example."
        )
    current = Example.objects.select_related("updated_by").get(pk=example.pk)
    if current.revision != expected_revision:
        who = current.updated_by.username if current.updated_by else "Someone"
        raise EditConflict(example=current, yours=text, theirs=current.ideal_output, changed_by=who)
    if text == current.ideal_output:
        return current
    messages = [dict(m) for m in current.messages]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages[last]["content"] = text
    tokens = get_token_counter().count_conversations([messages])[0]
    return _apply_change(
        example=example,
        expected_revision=expected_revision,
        user=user,
        change="edited the ideal output",
        yours=text,
        messages=messages,
        token_count=tokens,
        input_hash=input_hash(messages),
    )


def set_status(*, example: Example, status: str, user, expected_revision: int | None = None) -> Example:
    if status not in ExampleStatus.values:
        raise CurationError(f"Unknown status {status!r}: use {', '.join(ExampleStatus.values)}.")
    if status == example.status and (expected_revision is None or expected_revision == example.revision):
        return example
    return _apply_change(
        example=example,
        expected_revision=expected_revision,
        user=user,
        change=f"marked {status}",
        yours=example.ideal_output,
        status=status,
    )


def set_tags(*, example: Example, tags: list[str], user, expected_revision: int | None = None) -> Example:
    clean = sorted({t.strip().lower() for t in tags if t.strip()})
    bad = [t for t in clean if not all(ch.isalnum() or ch in "-_" for ch in t)]
    if bad:
        raise CurationError(f"Tags may only hold letters, digits, - and _ (not {', '.join(bad)}).")
    if clean == sorted(example.tags or []):
        return example
    return _apply_change(
        example=example,
        expected_revision=expected_revision,
        user=user,
        change=f"tags: {', '.join(clean) or 'none'}",
        yours=example.ideal_output,
        tags=clean,
    )


@dataclass
class EditOutcome:
    """What one autosave did: the example as it is now, whether anything was saved, and the refusal that stopped
    it (an ``EditConflict`` carrying both texts, or a ``CurationError``'s message), if any."""

    example: Example
    saved: bool = False
    conflict: EditConflict | None = None
    error: str = ""


def edit_example(
    *,
    example: Example,
    expected_revision: int,
    user,
    text: str | None = None,
    tags: list[str] | None = None,
    status: str | None = None,
) -> EditOutcome:
    """The labelling view's autosave: the ideal output, then tags, then status (each only when given), all
    against the revision the page loaded. Stops at the first refusal; what was saved before it stays saved."""
    outcome = EditOutcome(example=example)
    changes = [
        (save_ideal_output, {"text": text}) if text is not None else None,
        (set_tags, {"tags": tags}) if tags is not None else None,
        (set_status, {"status": status}) if status else None,
    ]
    try:
        for change, values in filter(None, changes):
            revision = outcome.example.revision if outcome.saved else expected_revision
            updated = change(example=outcome.example, expected_revision=revision, user=user, **values)
            outcome.saved = outcome.saved or updated.revision != outcome.example.revision
            outcome.example = updated
    except EditConflict as exc:
        outcome.conflict, outcome.example = exc, exc.example
    except CurationError as exc:
        outcome.error = str(exc)
    return outcome


def add_drafts(*, project, conversations: list[tuple[list[dict], str]], user) -> list[Example]:
    """New draft examples from conversations that did not come from a file (served answers, a teacher's), each
    with its origin ("stored completion chatcmpl-..."). Personal data is masked first (``quality.redact``): a
    draft never holds what the quality report would flag. The last assistant turn is the starting ideal."""
    rows = []
    for messages, origin in conversations:
        clean = [{"role": m["role"], "content": quality.redact(m.get("content") or "")} for m in messages]
        if not any(m["role"] == "assistant" for m in clean) or not any(m["role"] == "user" for m in clean):
            raise CurationError(f"{origin}: a draft needs a user turn and an answer.")
        rows.append(
            Example(
                project=project,
                messages=clean,
                status=ExampleStatus.DRAFT,
                origin=origin[:200],
                content_hash=content_hash(clean),
                input_hash=input_hash(clean),
                updated_by=user,
            )
        )
    return Example.objects.bulk_create(rows)


# --- the examples as the quality checks and the splits see them ------------------------------------
def _items(project, **filters) -> list[quality.Item]:
    rows = (
        Example.objects.filter(project=project, **filters)
        .order_by("id")
        .values_list("id", "messages", "split", "token_count")
    )
    return [quality.Item(pk, messages, split, tokens) for pk, messages, split, tokens in rows.iterator(chunk_size=5000)]


# --- quality report --------------------------------------------------------------------------------
def start_quality_report(*, project, user=None) -> QualityReport:
    """Queue a report (Celery task `datasets.quality_report`, queue `default`) unless one is already running."""
    active = QualityReport.objects.filter(
        project=project, status__in=[ReportStatus.QUEUED, ReportStatus.RUNNING]
    ).first()
    if active:
        return active
    report = QualityReport.objects.create(project=project, created_by=user)
    send_after_commit(quality_report_task, report.pk)
    return report


def run_quality_report(*, project, report: QualityReport | None = None) -> QualityReport:
    """Run every check over the project's examples and store the findings (dismissed ones stay dismissed)."""
    report = report or QualityReport.objects.create(project=project)
    started = time.perf_counter()
    report.mark_running()

    def progress(percent: int, stage: str) -> None:
        report.note_progress(percent, stage)

    items = _items(project)
    counter = get_token_counter()
    found = quality.run_checks(
        items, context_length=counter.context_length, model_name=counter.model_name, progress=progress
    )
    dismissed = set(QualityDismissal.objects.filter(project=project).values_list("key", flat=True))
    with transaction.atomic():
        report.findings.all().delete()
        rows = [
            QualityFinding(
                report=report,
                kind=f.kind,
                severity=f.severity,
                detail=f.detail[:500],
                key=f.key,
                dismissed=f.key in dismissed,
            )
            for f in found
        ]
        QualityFinding.objects.bulk_create(rows, batch_size=2000)
        through = QualityFinding.examples.through
        through.objects.bulk_create(
            [
                through(qualityfinding_id=row.pk, example_id=pk)
                for row, f in zip(rows, found, strict=True)
                for pk in f.example_ids
            ],
            batch_size=5000,
        )
        summary = Counter(f.kind for f, row in zip(found, rows, strict=True) if not row.dismissed)
        report.mark_done(
            example_count=len(items),
            summary={k: summary.get(k, 0) for k in FindingKind.values},
            seconds=round(time.perf_counter() - started, 2),
        )
    report.refresh_from_db()
    return report


def dismiss_finding(*, finding: QualityFinding, user) -> QualityFinding:
    """Mark a finding as not a problem; it stays dismissed in later reports until its examples change."""
    project = finding.report.project
    with transaction.atomic():
        QualityDismissal.objects.get_or_create(
            project=project, key=finding.key, defaults={"kind": finding.kind, "dismissed_by": user}
        )
        QualityFinding.objects.filter(report__project=project, key=finding.key).update(dismissed=True)
        report = finding.report
        summary = dict(report.summary)
        if not finding.dismissed and summary.get(finding.kind):
            summary[finding.kind] -= 1
            QualityReport.objects.filter(pk=report.pk).update(summary=summary)
    finding.refresh_from_db()
    return finding
