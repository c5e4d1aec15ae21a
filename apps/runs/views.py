from __future__ import annotations

import io
import zipfile
from pathlib import Path

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from apps.accounts.permissions import judging_blind, project_view
from ftstudio.asking import answers
from worker.artifacts import ArtifactStoreError
from worker.export import ExportError, adapter_files

from . import artifacts, exports, launching, presentation, selectors
from .forms import LaunchForm
from .models import ExportStatus, Run, RunExport
from .signals import run_list_asked


def _run(project, pk) -> Run:
    return get_object_or_404(
        Run.objects.select_related("base_model", "dataset_version", "created_by"), project=project, pk=pk
    )


@project_view("view")
def run_list(request, project):
    runs = list(selectors.project_runs(project))
    context = {"runs": runs, **answers(run_list_asked, project=project, runs=runs)}  # freshness: stale marks
    return render(request, "runs/run_list.html", context)


def _estimate_context(project, form) -> dict:
    if not form.is_valid():
        return {"estimate": None}
    choices = {
        "dataset_version": form.cleaned_data["dataset_version"],
        "base_model": form.cleaned_data["base_model"],
        "preset": form.cleaned_data["preset"],
        "overrides": form.overrides(),
    }
    model = choices["base_model"]
    # which card holds which mode, for models a GPU trains (also beside a refusal: what would fit instead)
    gpu_model = model.min_gpu_gb or model.parameter_count >= 1_000_000_000 or choices["overrides"].get("gpu_gb")
    fit = presentation.fit_rows(launching.launch_fit_table(**choices)) if gpu_model else None
    try:
        _v, _m, hp, estimate = launching.prepare_launch(project=project, **choices, **form.method_choices())
    except launching.LaunchError as exc:
        return {"estimate": None, "estimate_errors": exc.errors, "fit_table": fit}
    return {
        "estimate": estimate,
        "hyperparameters": hp,
        "estimate_words": presentation.estimate_words(estimate),
        "fit_table": fit,
    }


@project_view("run", post_need="run")
def run_create(request, project):
    form = LaunchForm(request.POST or None, project=project)
    if (
        request.method == "POST"
        and form.is_valid()
        and not form.prompt_scored
        and not form.cleaned_data["launch_without_prompt"]
    ):
        form.add_error(
            "launch_without_prompt",
            (
                "No prompt version has been scored in this project yet. A fine-tune is worth its cost only when a good "
                "prompt with examples falls short: try one in the prompt workspace first, or tick this box to launch "
                "anyway."
            ),
        )
    if request.method == "POST" and form.is_valid():
        try:
            run = launching.launch_run(
                project=project,
                dataset_version=form.cleaned_data["dataset_version"],
                base_model=form.cleaned_data["base_model"],
                preset=form.cleaned_data["preset"],
                overrides=form.overrides(),
                user=request.user,
                name=form.cleaned_data["name"],
                **form.method_choices(),
            )
        except launching.LaunchError as exc:
            form.add_launch_errors(exc.errors)
        else:
            messages.success(request, f"Queued {run}.")
            return redirect(run)
    context = {
        "form": form,
        "preset_table": presentation.preset_table(launching.PRESETS),
        "no_versions": not form.fields["dataset_version"].queryset.exists(),
    }
    if form.is_bound:
        context.update(_estimate_context(project, LaunchForm(request.POST, project=project)))
    else:  # the estimate of the choices the form opens with, before any change
        context.update(_estimate_context(project, LaunchForm(form.opening_choices(), project=project)))
    return render(request, "runs/run_form.html", context)


@project_view("run")
def run_estimate(request, project):
    form = LaunchForm(request.GET, project=project)
    return render(request, "runs/run_form.html#estimate", _estimate_context(project, form))


@project_view("view")
def run_detail(request, project, pk):
    run = _run(project, pk)
    context = selectors.run_progress(run)
    context["blind"] = judging_blind(project, request.user, request.access)
    if request.htmx:
        return render(request, "runs/run_detail.html#live", context)
    if request.access.allows("run"):
        context.update(_exports_context(run))
    return render(request, "runs/run_detail.html", context)


@project_view("view", post_need="run")
def run_cancel(request, project, pk):
    run = _run(project, pk)
    if request.method != "POST":
        return redirect(run)
    run = launching.cancel_run(run=run)
    messages.info(
        request,
        f"{run}: cancel requested."
        if not run.is_finished or run.status == "cancelled"
        else f"{run} had already finished.",
    )
    return redirect(run)


@project_view("view", post_need="run")
def run_resume(request, project, pk):
    run = _run(project, pk)
    if request.method != "POST":
        return redirect(run)
    try:
        run = launching.resume_run(run=run, user=request.user)
    except launching.RunError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{run} queued again: it resumes from its last checkpoint.")
    return redirect(run)


@project_view("view")
def run_adapter(request, project, pk):
    run = _run(project, pk)
    if judging_blind(project, request.user, request.access):
        raise PermissionDenied(
            "Adapters are not downloadable while you have blind review work in this project: "
            "running one would show which outputs it wrote."
        )
    try:  # on another node than the one that trained it: fetched from the artifact store into this node's cache
        folder = Path(artifacts.local_adapter_dir(run)) if run.adapter_path else None
    except ArtifactStoreError as exc:
        raise Http404("The adapter could not be fetched from the artifact store: try again shortly.") from exc
    if folder is None or not (folder / "adapter_config.json").is_file():
        raise Http404("This run has no adapter.")
    try:  # the config names the base model by its public id, not by this server's path
        files = adapter_files(folder, run.base_model.portable_id)
    except ExportError as exc:
        raise Http404(str(exc)) from exc
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"run-{run.pk}-adapter/{name}", data)
    response = HttpResponse(buffer.getvalue(), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-run-{run.pk}-adapter.zip"'
    return response


def _exports_context(run: Run, error: str = "") -> dict:
    jobs = exports.exports_for(run)
    return {"exports": jobs, "exports_pending": any(j.is_pending for j in jobs), "export_error": error}


@project_view("run", post_need="run")
def run_exports(request, project, pk):
    """The run page's Export section: POST queues an export (task on queue default), GET re-renders the list."""
    run = _run(project, pk)
    error = ""
    if request.method == "POST":
        try:
            exports.request_export(
                run=run, fmt=request.POST.get("format", ""), quant=request.POST.get("quant", ""), user=request.user
            )
        except ExportError as exc:
            error = str(exc)
        if not request.htmx:
            if error:
                messages.error(request, error)
            return redirect(run)
    return render(request, "runs/run_detail.html#exports", {"run": run, **_exports_context(run, error)})


@project_view("run")
def run_export_download(request, project, pk, export_pk):
    if judging_blind(project, request.user, request.access):
        raise PermissionDenied("Exports are not downloadable while you have blind review work in this project.")
    job = get_object_or_404(
        RunExport.objects.select_related("run"),
        run__project=project,
        run_id=pk,
        pk=export_pk,
        status=ExportStatus.SUCCEEDED,
    )
    # Streamed from the artifact store through this view (not a presigned redirect): the same login and role checks
    # hold for every byte, and the browser never needs to reach the store's endpoint (often an internal address).
    try:
        stream = exports.open_export(job)
    except ArtifactStoreError as exc:
        raise Http404(f"The export's file could not be read ({exc}): export it again, or retry shortly.") from exc
    response = FileResponse(stream, as_attachment=True, filename=job.file_name)
    response["Content-Length"] = str(job.size_bytes)
    return response


@project_view("view")
def run_compare(request, project):
    runs = selectors.project_runs(project)
    chosen = []
    for key in ("a", "b"):
        value = request.GET.get(key, "")
        if value.isdigit():
            run = runs.filter(pk=int(value)).first()
            if run is not None:
                chosen.append(run)
    columns = [selectors.run_progress(run) for run in chosen]
    rows = presentation.compare_rows([run.hyperparameters for run in chosen])
    return render(
        request,
        "runs/run_compare.html",
        {"runs": runs, "columns": columns, "rows": rows, "a": request.GET.get("a", ""), "b": request.GET.get("b", "")},
    )
