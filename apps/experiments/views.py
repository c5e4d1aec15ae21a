from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render

from apps.accounts.permissions import judging_blind, project_view
from apps.fleet.selectors import worker_silence
from ftstudio.asking import answers

from . import selectors, services
from .forms import ExperimentForm
from .signals import experiment_list_asked


@project_view("view")
def experiment_list(request, project):
    context = {"experiments": selectors.experiments_for(project), **answers(experiment_list_asked, project=project)}
    return render(request, "experiments/experiment_list.html", context)


@project_view("run")
def experiment_create(request, project):
    form = ExperimentForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        versions = [data["dataset_version"]] + ([data["versus"]] if data["versus"] else [])
        labels = [data["label"] or f"v{data['dataset_version'].number}"]
        if data["versus"]:
            labels.append(data["versus_label"] or f"v{data['versus'].number}")
        try:
            experiment = services.launch_experiment(
                project=project,
                versions=versions,
                fractions=data["fractions"],
                preset=data["preset"],
                base_model=data["base_model"],
                rubric=data["rubric"],
                seed=data["seed"],
                steps=data["steps"],
                labels=labels,
                user=request.user,
            )
        except services.ExperimentError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(
                request, f"Launched {experiment}: {experiment.arms.count() * len(experiment.fractions)} runs queued."
            )
            return redirect(experiment.get_absolute_url())
    return render(request, "experiments/experiment_form.html", {"form": form})


@project_view("view", post_need="run")
def experiment_detail(request, project, pk):
    experiment = selectors.experiment_for(project, pk)
    if experiment is None:
        raise Http404("No such experiment")
    blind = judging_blind(project, request.user, request.access)
    context = {
        "experiment": experiment,
        "blind": blind,
        "result": None if blind else selectors.experiment_result(experiment),
        "worker_silence": "" if experiment.is_finished else worker_silence(since=experiment.created_at),
    }
    if request.htmx:
        return render(request, "experiments/experiment_detail.html#progress", context)
    return render(request, "experiments/experiment_detail.html", context)


@project_view("run")
def experiment_cancel(request, project, pk):
    experiment = selectors.experiment_for(project, pk)
    if experiment is None:
        raise Http404("No such experiment")
    if request.method == "POST":
        services.cancel_experiment(experiment=experiment)
        messages.info(request, f"{experiment} cancelled: its unfinished runs were asked to stop.")
    return redirect(experiment.get_absolute_url())
