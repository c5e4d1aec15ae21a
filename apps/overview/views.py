from django.shortcuts import render

from apps.accounts.permissions import project_view

from .next_steps import next_steps


@project_view("view")
def project_detail(request, project):
    return render(request, "overview/project_detail.html", {"next": next_steps(project, request.user, request.access)})
