"""The project overview's "your next step" panel: what this member should do next, in their role's words.

A read (no writes): counts and links only. For members who judge, nothing here names a candidate, a run
result or an evaluation's labels: a reviewer sees how many pairs wait for them, never what is behind them
(the blind rules of ``apps.accounts.permissions``).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import reverse

from apps.accounts.models import Role
from apps.accounts.permissions import Access


@dataclass(frozen=True)
class Step:
    text: str  # what to do, as a sentence
    url: str  # where it is done
    action: str  # the link's words


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def designer_steps(project) -> list[Step]:
    from apps.datasets.models import Example, ExampleStatus, QualityReport, ReportStatus
    from apps.evaluations.models import Rubric

    slug = {"slug": project.slug}
    examples = reverse("example_list", kwargs=slug)
    if not Example.objects.filter(project=project).exists():
        return [
            Step(
                "No examples yet: import a file of conversations to start.",
                reverse("example_import", kwargs=slug),
                "Import examples",
            )
        ]
    steps = []
    drafts = Example.objects.filter(project=project, status=ExampleStatus.DRAFT).count()
    if drafts:
        steps.append(
            Step(
                f"{_plural(drafts, 'example')} to label: check or rewrite the ideal response, then approve or reject.",
                f"{examples}?status=draft",
                "Label examples",
            )
        )
    report = QualityReport.objects.filter(project=project).order_by("-id").first()
    quality = reverse("quality_report", kwargs=slug)
    if report is None:
        steps.append(
            Step(
                "No quality report yet: run one to find duplicates, conflicts and personal data.",
                quality,
                "Run the quality report",
            )
        )
    elif report.is_active:
        steps.append(Step("The quality report is running.", quality, "Watch its progress"))
    elif report.status == ReportStatus.DONE:
        findings = report.findings.filter(dismissed=False).count()
        changed = Example.objects.filter(
            project=project, updated_at__gt=report.finished_at or report.created_at
        ).count()
        if findings:
            steps.append(Step(f"{_plural(findings, 'quality finding')} to fix or dismiss.", quality, "Open the report"))
        if changed:
            steps.append(
                Step(
                    f"{_plural(changed, 'example')} changed since the last quality report: run it again.",
                    quality,
                    "Run the quality report",
                )
            )
    else:
        steps.append(Step("The last quality report failed: run it again.", quality, "Run the quality report"))
    if not Rubric.objects.filter(project=project).exists():
        steps.append(
            Step(
                "No rubric yet: write what a good answer looks like, so reviewers can judge against it.",
                reverse("rubric_create", kwargs=slug),
                "Write a rubric",
            )
        )
    return steps


def pm_steps(project) -> list[Step]:
    from apps.datasets.models import Example, ExampleStatus
    from apps.datasets.selectors import frozen_versions
    from apps.evaluations.models import Candidate
    from apps.runs.models import Run, RunStatus

    slug = {"slug": project.slug}
    steps = []
    # an experiment's subsets (derived_from) are parts of an older version, never the data to train on next
    latest = frozen_versions(project).first()
    approved = Example.objects.filter(project=project, status=ExampleStatus.APPROVED)
    if latest is None:
        if approved.exists():
            steps.append(
                Step(
                    f"{_plural(approved.count(), 'approved example')} and no version yet: freeze them into "
                    "a version to train on.",
                    reverse("version_list", kwargs=slug),
                    "Freeze a version",
                )
            )
        else:
            steps.append(
                Step(
                    "No approved examples yet: designers label and approve them before a version can be frozen.",
                    reverse("example_list", kwargs=slug),
                    "See the examples",
                )
            )
    elif Example.objects.filter(project=project, updated_at__gt=latest.created_at).exists():
        steps.append(
            Step(
                f"Examples changed since v{latest.number}: freeze a new version to train on them.",
                reverse("version_list", kwargs=slug),
                "Freeze a version",
            )
        )
    if latest is not None and not Run.objects.filter(project=project, dataset_version=latest).exists():
        from apps.prompts.selectors import any_scored

        if not any_scored(project):
            steps.append(
                Step(
                    f"No prompt has been tried yet: run one on v{latest.number}'s validation split first; "
                    "prompting alone may be enough.",
                    reverse("prompt_workspace", kwargs=slug),
                    "Try a prompt",
                )
            )
        steps.append(
            Step(
                f"v{latest.number} has no run yet: launch one (the form estimates time and memory).",
                reverse("run_create", kwargs=slug),
                "Launch a run",
            )
        )
    running = Run.objects.filter(project=project, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).order_by(
        "-created_at"
    )
    for run in running[:3]:
        steps.append(
            Step(
                f"{run} is {run.get_status_display().lower()}"
                + (f" (step {run.step} of {run.total_steps})." if run.total_steps else "."),
                run.get_absolute_url(),
                "Watch it",
            )
        )
    from apps.demo.services import demo_experiment_plan

    plan = demo_experiment_plan(project)
    if plan is not None and not project.experiments.exists():
        steps.append(
            Step(
                "How much data does the house style need? The demo's scaling experiment trains on "
                f"{', '.join(str(n) for n in plan.sizes)} of v{plan.version.number}'s examples, the same "
                f"{plan.steps} steps each, and scores each on the test split.",
                reverse("experiment_list", kwargs=slug),
                "Run the scaling experiment",
            )
        )
    from apps.freshness.selectors import stale_runs

    stale = stale_runs(project)
    if stale and latest is not None:
        steps.append(
            Step(
                f"{_plural(len(stale), 'finished run')} not evaluated on current data (v{latest.number}): "
                "re-evaluate them on it.",
                reverse("freshness", kwargs=slug),
                "Re-evaluate",
            )
        )
    unevaluated = (
        Run.objects.filter(project=project, status=RunStatus.SUCCEEDED)
        .exclude(adapter_path="")
        .exclude(pk__in=Candidate.objects.filter(run__isnull=False).values("run_id"))
        .order_by("-created_at")
    )
    first = unevaluated.first()
    if first is not None:
        others = unevaluated.count() - 1
        steps.append(
            Step(
                f"{first} has finished and is in no evaluation"
                + (f" (and {_plural(others, 'other run')})" if others else "")
                + ": create an evaluation to compare it with the base model.",
                reverse("evaluation_create", kwargs=slug),
                "Create an evaluation",
            )
        )
    return steps


def pairs_waiting(project, user) -> int:
    """Pairs this member may still judge, over the project's ready evaluations (0 where they have seen labels)."""
    from apps.evaluations.models import Evaluation, EvaluationStatus
    from apps.evaluations.selectors import remaining_for

    return sum(
        remaining_for(e, user) for e in Evaluation.objects.filter(project=project, status=EvaluationStatus.READY)
    )


def reviewer_steps(project, user) -> list[Step]:
    waiting = pairs_waiting(project, user)
    if not waiting:
        return []
    return [
        Step(
            f"{_plural(waiting, 'pair')} waiting for you to judge, blind.",
            reverse("review_queue", kwargs={"slug": project.slug}),
            "Start reviewing",
        )
    ]


def next_steps(project, user, access: Access) -> dict:
    """``{"role": label, "steps": [...], "idle": sentence when there is nothing to do}`` for the overview."""
    role = access.role or ("pm" if access.is_admin else None)
    if role == Role.DESIGNER:
        steps, idle = (
            designer_steps(project),
            "Nothing waiting: every example is labelled and the quality report is clean.",
        )
    elif role == Role.REVIEWER:
        steps, idle = (
            reviewer_steps(project, user),
            (
                "No pairs waiting for you. They appear in the review queue once "
                "a PM creates an evaluation and its outputs are generated."
            ),
        )
    else:
        steps = pm_steps(project) + reviewer_steps(project, user)
        idle = "Nothing waiting: every version has a run and every finished run an evaluation."
    return {"role": dict(Role.choices).get(role, "Admin"), "steps": steps, "idle": idle}
