"""Current data: what is not evaluated on it, one action to re-evaluate, and a comparison of two evaluations."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render

from apps.accounts.permissions import project_view
from apps.datasets.selectors import frozen_versions
from apps.evaluations.blind import evaluation_sight
from apps.evaluations.models import Evaluation
from apps.runs.models import Run, RunStatus

from . import selectors, services
from .signals import stale_on_traffic


@project_view("view", post_need="evaluate")
def freshness(request, project):
    current = selectors.current_data(project)
    evaluations = list(Evaluation.objects.filter(project=project).select_related("dataset_version", "rubric"))
    runs = list(Run.objects.filter(project=project, status=RunStatus.SUCCEEDED).select_related("dataset_version"))
    stale_runs = selectors.stale_runs(project, runs)
    versions = frozen_versions(project)  # not an experiment's subsets: they are never current data
    if request.method == "POST":
        version = versions.filter(pk=request.POST.get("dataset_version") or 0).first()
        run_ids = [int(pk) for pk in request.POST.getlist("runs") if pk.isdigit()]
        try:
            if version is None:
                raise services.ReevaluateError("Pick the dataset version to re-evaluate on.")
            if not run_ids:
                raise services.ReevaluateError("Pick at least one run to re-evaluate.")
            evaluation = services.reevaluate(
                project=project, dataset_version=version, run_ids=run_ids, user=request.user
            )
        except services.EvaluationError as exc:  # ReevaluateError, or create_evaluation's own checks
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Queued {evaluation}: the same candidates on v{version.number}'s test split.")
            return redirect(evaluation)
    return render(
        request,
        "freshness/freshness.html",
        {
            "current": current,
            "versions": versions,
            "runs": runs,
            "stale_runs": stale_runs,
            "stale_traffic": stale_on_traffic(project, runs),
            "evaluations": evaluations,
            "stale_evaluations": selectors.stale_evaluations(project, evaluations),
        },
    )


@project_view("view")
def compare(request, project):
    """Two evaluations example by example: ``?a=<older pk>&b=<newer pk>[&candidate=run:3][&sort=regression]``."""
    evaluations = Evaluation.objects.filter(project=project).select_related("dataset_version", "rubric")
    context = {"evaluations": evaluations, "sort": request.GET.get("sort", "regression")}
    a = evaluations.filter(pk=request.GET.get("a") or 0).first() if (request.GET.get("a") or "").isdigit() else None
    b = evaluations.filter(pk=request.GET.get("b") or 0).first() if (request.GET.get("b") or "").isdigit() else None
    context.update(a=a, b=b)
    if a is None or b is None:
        if request.GET.get("a") or request.GET.get("b"):
            context["error"] = "Pick two evaluations of this project to compare."
        return render(request, "freshness/compare.html", context)
    hidden = [e for e in (a, b) if not evaluation_sight(e, request.user, request.access).examples]
    if hidden:
        context["error"] = (
            f"{hidden[0]} is hidden from you while blind review goes on (or its examples are not "
            "shared with reviewers): the comparison shows which candidate wrote each output."
        )
        return render(request, "freshness/compare.html", context)
    try:
        context["diff"] = selectors.compare_evaluations(
            a, b, candidate=request.GET.get("candidate", ""), sort=context["sort"]
        )
    except selectors.CompareError as exc:
        context["error"] = str(exc)
    return render(request, "freshness/compare.html", context)
