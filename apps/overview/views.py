from django.shortcuts import render

from apps.accounts.permissions import project_view

from .drift_chart import drift_charts
from .next_steps import next_steps


@project_view("view")
def project_detail(request, project):
    context = {"next": next_steps(project, request.user, request.access)}
    if request.access.allows("label"):  # those who see traffic (not reviewers)
        context["drift_charts"] = drift_charts(project)
    return render(request, "overview/project_detail.html", context)
