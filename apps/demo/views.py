"""The demo project's one-click experiment, launched from the experiment list."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect

from apps.accounts.permissions import project_view
from apps.experiments.services import ExperimentError

from .services import launch_demo_experiment


@project_view("run")
def experiment_demo(request, project):
    """The demo project's one-click scaling experiment (fixed steps, a few sizes; minutes on a CPU)."""
    if request.method != "POST":
        return redirect("experiment_list", slug=project.slug)
    try:
        experiment = launch_demo_experiment(project=project, user=request.user)
    except ExperimentError as exc:
        messages.error(request, str(exc))
        return redirect("experiment_list", slug=project.slug)
    messages.success(
        request, f"Launched {experiment}: {experiment.arms.count() * len(experiment.fractions)} runs queued."
    )
    return redirect(experiment.get_absolute_url())
