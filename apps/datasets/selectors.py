"""Datasets: reads (no writes). The example list's counts and queue, the labelling view's neighbours and findings,
the latest quality report."""

from __future__ import annotations

from django.db import connection
from django.db.models import Count

from .models import (
    DatasetVersion,
    Example,
    ExampleStatus,
    FindingKind,
    PreferencePair,
    PreferenceVersion,
    QualityFinding,
    QualityReport,
    ReportStatus,
    Split,
)


def frozen_versions(project):
    """The versions a person froze, newest first: what runs, evaluations, prompts and experiments are offered.
    An experiment's subsets (``derived_from`` set) are parts of an older version, never data to pick by hand."""
    return DatasetVersion.objects.filter(project=project, derived_from__isnull=True).order_by("-number")


def frozen_preference_versions(project):
    """The project's frozen preference versions, newest first, with the examples version each is anchored to (what
    a preference run is offered)."""
    return (
        PreferenceVersion.objects.filter(project=project)
        .select_related("dataset_version", "created_by")
        .order_by("-number")
    )


PREFERENCE_FILTERS = {"": "In use", "excluded": "Left out", "verdict": "From verdicts", "edit": "Improved replies"}


def preference_pool(project, show: str = "", hide_outputs_of_models: bool = False):
    """The pool's pairs for its page, newest first: ``show`` one of PREFERENCE_FILTERS (an origin, or the pairs
    left out). ``hide_outputs_of_models``: only imported pairs (for a member still judging blind, who must not see
    which model output reviewers preferred)."""
    pairs = PreferencePair.objects.filter(project=project).select_related("created_by").order_by("-id")
    if show == "excluded":
        pairs = pairs.filter(excluded=True)
    else:
        pairs = pairs.filter(excluded=False)
        if show in ("verdict", "edit"):
            pairs = pairs.filter(origin=show)
    if hide_outputs_of_models:
        pairs = pairs.filter(origin="import")
    return pairs


def preference_counts(project) -> dict[str, int]:
    """Pairs in use per origin, and those left out (one GROUP BY)."""
    counts = {"total": 0, "excluded": 0, "verdict": 0, "edit": 0, "import": 0}
    for origin, excluded, n in (
        PreferencePair.objects.filter(project=project)
        .values_list("origin", "excluded")
        .annotate(n=Count("id"))
        .order_by()
    ):
        if excluded:
            counts["excluded"] += n
        else:
            counts["total"] += n
            counts[origin] = counts.get(origin, 0) + n
    return counts


def latest_report(project) -> QualityReport | None:
    """The newest finished quality report of the project (None before the first one)."""
    return QualityReport.objects.filter(project=project, status=ReportStatus.DONE).order_by("-id").first()


def example_counts(project) -> tuple[dict[str, int], dict[str, int]]:
    """(examples per status, examples per split; "" unassigned) from one GROUP BY over the (project, status,
    split) index (an index-only scan)."""
    status_counts = dict.fromkeys(ExampleStatus.values, 0)
    split_counts = dict.fromkeys([*Split.values, ""], 0)
    for status, split, n in (
        Example.objects.filter(project=project).values_list("status", "split").annotate(n=Count("status")).order_by()
    ):
        status_counts[status] = status_counts.get(status, 0) + n
        split_counts[split] = split_counts.get(split, 0) + n
    return status_counts, split_counts


def known_count(filters: dict[str, str], status_counts: dict[str, int], split_counts: dict[str, int]) -> int | None:
    """How many examples the queue holds when ``example_counts`` already says (no filter, or one status or split
    filter); None when only a COUNT(*) can tell."""
    if not filters:
        return sum(status_counts.values())
    if set(filters) == {"status"} and filters["status"] in status_counts:
        return status_counts[filters["status"]]
    if set(filters) == {"split"} and filters["split"] in Split.values:
        return split_counts[filters["split"]]
    return None


def example_queue(project, filters: dict[str, str]):
    """The examples a labelling queue walks through, in id order."""
    qs = Example.objects.filter(project=project)
    if filters.get("status") in ExampleStatus.values:
        qs = qs.filter(status=filters["status"])
    if filters.get("split") == "none":
        qs = qs.filter(split="")
    elif filters.get("split") in Split.values:
        qs = qs.filter(split=filters["split"])
    if filters.get("tag"):
        tag = filters["tag"].lower()
        # jsonb containment on PostgreSQL; SQLite has no JSON `contains`, so match the quoted tag in the JSON text
        qs = (
            qs.filter(tags__contains=[tag])
            if connection.vendor == "postgresql"
            else qs.filter(tags__icontains=f'"{tag}"')
        )
    if filters.get("flag") in FindingKind.values:
        report = latest_report(project)
        if report is None:
            return qs.none()
        qs = qs.filter(
            quality_findings__report=report, quality_findings__kind=filters["flag"], quality_findings__dismissed=False
        ).distinct()
    return qs.order_by("id")


def neighbours(queue, example: Example) -> tuple[int | None, int | None]:
    """(previous id, next id) of the example in its queue."""
    nxt = queue.filter(id__gt=example.id).values_list("id", flat=True).first()
    prev = queue.filter(id__lt=example.id).order_by("-id").values_list("id", flat=True).first()
    return prev, nxt


def open_findings_of(project, example: Example):
    """The latest report's findings about this example (dismissed last)."""
    report = latest_report(project)
    if report is None:
        return QualityFinding.objects.none()
    return QualityFinding.objects.filter(report=report, examples=example).order_by("dismissed", "id")
