"""The traffic page: what a project's models were asked and answered, filtered; rows sent to drafts."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import reverse

from apps.accounts.permissions import project_view
from apps.api.selectors import completion_storage
from apps.api.services import ApiKeyError, set_completion_storage
from ftstudio.celery import send_after_commit

from . import selectors, services
from .tasks import distill as distill_task
from .tasks import measure_drift as measure_drift_task


@project_view("label", post_need="label")
def traffic(request, project):
    filters = selectors.Filters.from_query(request.GET)
    if request.method == "POST" and request.POST.get("action") == "distill_version":
        teacher, version = request.POST.get("teacher", ""), request.POST.get("version", "")
        try:
            found = services.frozen_version(project, version)
            services.teacher_config(project, teacher)  # a clear error now rather than in the worker
        except services.TrafficError as exc:
            messages.error(request, str(exc))
        else:
            send_after_commit(distill_task, project.pk, [], teacher, request.user.pk, found.pk)
            messages.success(
                request,
                f"The teacher is answering the training questions of v{found.number}: its answers arrive as drafts.",
            )
        return redirect(reverse("traffic", kwargs={"slug": project.slug}))
    if request.method == "POST" and request.POST.get("action") == "distill":
        ids, teacher = request.POST.getlist("rows"), request.POST.get("teacher", "")
        try:
            if not ids:
                raise services.TrafficError("Tick at least one row for the teacher to answer.")
            services.teacher_config(project, teacher)  # a clear error now rather than in the worker
        except services.TrafficError as exc:
            messages.error(request, str(exc))
        else:
            send_after_commit(distill_task, project.pk, ids, teacher, request.user.pk)
            messages.success(request, f"The teacher is answering {len(ids)} questions: its answers arrive as drafts.")
        return redirect(reverse("traffic", kwargs={"slug": project.slug}))
    if request.method == "POST":
        try:
            sent = services.send_to_drafts(project=project, public_ids=request.POST.getlist("rows"), user=request.user)
        except services.TrafficError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request, f"{len(sent)} rows are now draft examples: correct their answers in Examples (status Draft)."
            )
        query = request.POST.get("query", "")
        return redirect(reverse("traffic", kwargs={"slug": project.slug}) + (f"?{query}" if query else ""))
    context = {
        "filters": filters,
        "rows": selectors.traffic_rows(project, filters),
        "models": selectors.served_models(project),
        "query": urlencode({k: v for k, v in vars(filters).items() if v}),
        "storage": completion_storage(project),
        "drift": selectors.drift_lines(project),
        "teachers": selectors.teachers(project),
        "challengers": selectors.challengers(project),
        "rubrics": selectors.rubrics(project),
        "versions": selectors.versions(project),
        "filter_fields": [(k, v) for k, v in vars(filters).items() if v],
    }
    if request.htmx:
        return render(request, "traffic/traffic.html#rows", context)
    return render(request, "traffic/traffic.html", context)


@project_view("manage", post_need="manage")
def storage(request, project):
    if request.method == "POST":
        raw = request.POST.get("retention_days", "")
        try:
            if not raw.strip().isdigit():
                raise ApiKeyError("Keep stored answers for a whole number of days (0 keeps them forever).")
            threshold = request.POST.get("drift_threshold", "30").strip()
            if not threshold.isdigit() or not 1 <= int(threshold) <= 100:
                raise ApiKeyError("The drift threshold is a percentage from 1 to 100.")
            set_completion_storage(
                project=project,
                store_every_completion=request.POST.get("store_every_completion") == "on",
                retention_days=int(raw),
                drift_threshold=int(threshold) / 100,
            )
        except ApiKeyError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Saved how this project keeps its served answers.")
    return redirect("traffic", slug=project.slug)


@project_view("label", post_need="label")
def measure_drift(request, project):
    if request.method == "POST":
        send_after_commit(measure_drift_task, project.pk)
        messages.success(request, "Measuring drift: the chart updates in a minute or two.")
    return redirect("traffic", slug=project.slug)


@project_view("label", post_need="evaluate")
def review_sample(request, project):
    """The newest stored answers matching the page's filters, reviewed blind against another model."""
    filters = selectors.Filters.from_query(request.POST)
    back = reverse("traffic", kwargs={"slug": project.slug}) + (
        f"?{request.POST['query']}" if request.POST.get("query") else ""
    )
    if request.method != "POST":
        return redirect(back)
    size, rubric = request.POST.get("size", "").strip(), request.POST.get("rubric", "").strip()
    try:
        if not size.isdigit():
            raise services.TrafficError("The sample size is a whole number of questions.")
        evaluation = services.review_sample(
            project=project,
            filters=filters,
            size=int(size),
            challenger=request.POST.get("challenger", ""),
            rubric_id=int(rubric) if rubric.isdigit() else 0,
            user=request.user,
        )
    except services.TrafficError as exc:
        messages.error(request, str(exc))
        return redirect(back)
    messages.success(
        request, "The sample is an evaluation now: the other model is answering it, then reviewers compare blind."
    )
    return redirect(evaluation.get_absolute_url())
