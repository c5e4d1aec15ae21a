"""Writes of the traffic page: stored completions sent into the project as draft examples."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from apps.api.selectors import run_model_id, stored_completions
from apps.datasets import quality
from apps.datasets.models import DatasetVersionItem
from apps.datasets.services import CurationError, add_drafts
from apps.runs.models import Run, RunStatus

from .models import DriftWeek


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
