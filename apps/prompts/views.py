"""The prompt workspace pages: thin views over ``services`` (writes) and ``selectors`` (reads)."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django_htmx.http import HttpResponseClientRefresh

from apps.accounts.permissions import judging_blind, project_view
from apps.datasets.models import DatasetVersion
from apps.datasets.selectors import frozen_versions

from . import selectors, services
from .forms import PromptVersionForm
from .models import PromptVersion


def _chosen_version(project, request) -> DatasetVersion | None:
    versions = frozen_versions(project)
    raw = request.POST.get("dataset_version") or request.GET.get("dataset_version")
    chosen = versions.filter(pk=raw).first() if raw and str(raw).isdigit() else None
    return chosen or versions.first()


BLIND = (
    "Prompts and their outputs are hidden while you have pairs to judge blind in this project: the best prompt "
    "is the prompt-only baseline of evaluations, and seeing it could tell you which side wrote what."
)


def _blind(request, project) -> bool:
    return judging_blind(project, request.user, request.access)


@project_view("view", post_need="label")
def prompt_workspace(request, project):
    """Write a prompt, pick few-shot examples, run it on the validation split; the numbered versions below."""
    if _blind(request, project):
        return render(request, "prompts/workspace.html", {"blind": BLIND})
    dataset_version = _chosen_version(project, request)
    train = list(selectors.train_items(dataset_version))
    start = {}
    copy_of = request.GET.get("from")
    if copy_of and copy_of.isdigit():  # start from an earlier version ("edit" makes the next number)
        earlier = PromptVersion.objects.filter(project=project, number=int(copy_of)).first()
        if earlier is not None and earlier.dataset_version_id == getattr(dataset_version, "pk", None):
            start = {"system_prompt": earlier.system_prompt, "shots": earlier.shot_positions, "note": earlier.note}
    form = PromptVersionForm(
        request.POST or None, initial=start, project=project, dataset_version=dataset_version, train_items=train
    )
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        try:
            version = services.create_prompt_version(
                project=project,
                dataset_version=d["dataset_version"],
                system_prompt=d["system_prompt"],
                shot_positions=d["shots"],
                base_model=d["base_model"],
                rubric=d["rubric"],
                note=d["note"],
                user=request.user,
            )
        except services.PromptError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Saved {version}; it is being run on the validation split.")
            return redirect(version)
    return render(
        request,
        "prompts/workspace.html",
        {
            "form": form,
            "dataset_version": dataset_version,
            "versions": selectors.prompt_versions(project),
            "best": selectors.best_by_dataset_version(project),
            "dataset_versions": frozen_versions(project),
        },
    )


@project_view("view")
def prompt_version_detail(request, project, number):
    if _blind(request, project):
        return render(request, "prompts/workspace.html", {"blind": BLIND})
    version = get_object_or_404(selectors.prompt_versions(project), number=number)
    if request.htmx:
        if not version.is_active:
            return HttpResponseClientRefresh()
        return render(request, "prompts/version_detail.html#progress", {"version": version})
    best = selectors.best_prompt_version(project, version.dataset_version)
    return render(
        request,
        "prompts/version_detail.html",
        {
            "version": version,
            "rows": selectors.output_rows(version),
            "is_best": best is not None and best.pk == version.pk,
        },
    )
