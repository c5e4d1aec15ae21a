"""What the traffic page lists: a project's stored completions, filtered, each with what the quality report's
personal-data check finds in it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django.utils import timezone

from apps.api.selectors import stored_completions
from apps.datasets.quality import personal_data

PAGE = 50
PERSONAL_SCAN = 2000  # the personal-data filter reads at most this many of the newest matching rows


@dataclass
class Filters:
    model: str = ""
    meta_key: str = ""
    meta_value: str = ""
    since: str = ""  # YYYY-MM-DD, inclusive
    until: str = ""  # YYYY-MM-DD, inclusive
    personal: str = ""  # "", "yes" (only rows with personal data) or "no"

    @classmethod
    def from_query(cls, query) -> Filters:
        return cls(**{name: (query.get(name) or "").strip() for name in cls.__dataclass_fields__})

    def any(self) -> bool:
        return any(vars(self).values())


@dataclass
class TrafficRow:
    completion: object
    question: str
    answer: str
    personal: list[str]


def _day(text: str, *, end: bool = False) -> datetime | None:
    try:
        day = datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        return None
    return timezone.make_aware(datetime.combine(day + timedelta(days=1) if end else day, time.min))


def _row(completion) -> TrafficRow:
    users = [m.get("content") or "" for m in completion.messages if m.get("role") == "user"]
    text = "\n".join(m.get("content") or "" for m in completion.messages) + "\n" + completion.answer
    return TrafficRow(completion, users[-1] if users else "", completion.answer, personal_data(text))


def traffic_rows(project, filters: Filters, limit: int = PAGE) -> list[TrafficRow]:
    """The newest matching stored completions (at most ``limit``)."""
    metadata = {filters.meta_key: filters.meta_value} if filters.meta_key else None
    rows = stored_completions(
        project,
        model=filters.model,
        metadata=metadata,
        since=_day(filters.since),
        until=_day(filters.until, end=True),
    ).reverse()
    if not filters.personal:
        return [_row(c) for c in rows[:limit]]
    wanted = filters.personal == "yes"
    found = [r for r in map(_row, rows[:PERSONAL_SCAN]) if bool(r.personal) == wanted]
    return found[:limit]


def served_models(project) -> list[str]:
    """The model ids the project's keys may call (what the model filter offers; read without scanning the rows)."""
    from apps.api.selectors import project_models

    return [t.id for t in project_models(project)]


# --- drift -------------------------------------------------------------------------------------------------
MIN_DRIFT_INPUTS = 10  # a week with fewer stored inputs than this marks nothing


@dataclass
class DriftLine:
    run: object
    weeks: list  # DriftWeek rows, oldest first
    drifted: str  # the reason when the run is marked, else ""


def drift_lines(project) -> list[DriftLine]:
    """Each served run's measured weeks, and whether its newest week crosses the project's threshold."""
    from apps.api.selectors import completion_storage

    from .models import DriftWeek

    threshold = completion_storage(project).drift_threshold
    lines: dict[int, DriftLine] = {}
    for row in DriftWeek.objects.filter(project=project).select_related("run", "run__dataset_version"):
        lines.setdefault(row.run_id, DriftLine(row.run, [], "")).weeks.append(row)
    for line in lines.values():
        newest = line.weeks[-1]
        if newest.inputs >= MIN_DRIFT_INPUTS and newest.share > threshold:
            line.drifted = (
                f"{newest.share:.0%} of the questions of the week of {newest.week:%b %d} have nothing close in "
                f"v{line.run.dataset_version.number}, above this project's {threshold:.0%}"
            )
    return sorted(lines.values(), key=lambda line: line.run.pk)


def drifted_runs(project, runs=None) -> dict[int, str]:
    """{run pk: reason} for runs not evaluated on current traffic (``runs``: only those)."""
    wanted = None if runs is None else {r.pk for r in runs}
    return {
        line.run.pk: line.drifted
        for line in drift_lines(project)
        if line.drifted and (wanted is None or line.run.pk in wanted)
    }


def teachers(project) -> list[tuple[str, str]]:
    """(value, label) of the teachers a selection can be sent to: the project's judge endpoint, registered models."""
    from apps.api.selectors import project_models
    from apps.evaluations.models import JudgeSettings

    judge = JudgeSettings.objects.filter(project=project).first()
    found = [("judge", f"{judge.model} (the judge's endpoint)")] if judge else []
    return found + [(t.id, t.id) for t in project_models(project) if not t.id.startswith("ft:")]


def challengers(project) -> list[tuple[str, str]]:
    """(value, label) of what a sample of traffic can be reviewed against: the project's tuned runs, the base
    model, the prompt-only baseline."""
    from apps.api.selectors import run_model_id
    from apps.runs.models import Run, RunStatus

    runs = Run.objects.filter(project=project, status=RunStatus.SUCCEEDED).exclude(adapter_path="").order_by("-pk")
    return [
        *((f"run:{r.pk}", f"Tuned run #{r.pk}{f' ({r.name})' if r.name else ''}: {run_model_id(r)}") for r in runs),
        ("base", "The base model"),
        ("prompt", "The base model with the house prompt"),
    ]


def rubrics(project) -> list:
    from apps.evaluations.models import Rubric

    return list(Rubric.objects.filter(project=project).order_by("-pk"))


def versions(project) -> list:
    """The frozen dataset versions whose training questions a teacher may answer."""
    from apps.datasets.selectors import frozen_versions

    return list(frozen_versions(project))
