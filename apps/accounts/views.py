from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from . import services
from .forms import ProjectForm
from .permissions import projects_for


@login_required
def project_list(request):
    projects = projects_for(request.user)
    roles = dict(request.user.memberships.values_list("project_id", "role"))
    rows = [(p, roles.get(p.id)) for p in projects]
    return render(request, "accounts/project_list.html", {"rows": rows})


@login_required
def project_create(request):
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        project = services.create_project(created_by=request.user, **form.cleaned_data)
        messages.success(request, f"Created {project.name}. Add your team under Settings.")
        return redirect(project)
    return render(request, "accounts/project_form.html", {"form": form})


@login_required
def invitation(request, token: str):
    """The invited user's page: which project and role, and a button to accept."""
    try:
        found = services.open_invitation(token)
        if request.method == "POST":
            membership = services.accept_invitation(token=token, user=request.user)
            messages.success(request, f"You joined {membership.project.name} as {membership.get_role_display()}.")
            return redirect(membership.project)
    except services.MembershipError as exc:
        return render(request, "accounts/invitation.html", {"error": str(exc)}, status=410)
    return render(request, "accounts/invitation.html", {"invitation": found})


def locked_out(request, original_response=None, credentials=None):
    """django-axes' lockout answer: the log-in page again, saying why and for how long (HTTP 429)."""
    minutes = max(1, int(settings.AXES_COOLOFF_TIME.total_seconds() // 60))
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    return render(
        request,
        "accounts/login.html",
        {
            "locked_out": True,
            "cooloff_minutes": minutes,
            "failure_limit": settings.AXES_FAILURE_LIMIT,
            "username": username,
            "next": request.POST.get("next", ""),
        },
        status=429,
    )
