from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.mail import send_mail
from django.shortcuts import redirect, render
from django.urls import reverse

from . import selectors, services
from .forms import InviteForm, MemberForm, ProjectForm
from .permissions import project_view, projects_for


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


@project_view("manage")
def project_settings(request, project):
    form = MemberForm(request.POST or None)
    if request.method == "POST":
        if "create_key" in request.POST or "revoke_key" in request.POST:
            return _api_key_action(request, project)
        if "invite" in request.POST:
            return _invite(request, project)
        if "remove" in request.POST:
            try:
                services.remove_member(project=project, membership_id=int(request.POST["remove"]))
                messages.success(request, "Member removed.")
            except (services.MembershipError, ValueError) as exc:
                messages.error(request, str(exc))
            return redirect("project_settings", slug=project.slug)
        if form.is_valid():
            try:
                m = services.set_member_role(project=project, **form.cleaned_data)
                messages.success(request, f"{m.user.username} is now {m.get_role_display()} in {project.name}.")
                return redirect("project_settings", slug=project.slug)
            except services.MembershipError as exc:
                form.add_error(None, str(exc))
    return settings_page(request, project, form=form)


def _invite(request, project):
    """An invitation: its join link is shown once, in this response; with an email address it is also mailed."""
    form = InviteForm(request.POST, prefix="invite")
    if not form.is_valid():
        return settings_page(request, project, invite_form=form)
    email = form.cleaned_data["email"]
    invitation, token = services.invite(
        project=project, role=form.cleaned_data["role"], email=email, created_by=request.user
    )
    link = request.build_absolute_uri(reverse("invitation", kwargs={"token": token}))
    what = f"Join link for {email or 'whoever you send it to'} as {invitation.get_role_display()} (valid 7 days)"
    if email:
        try:
            send_mail(
                f"Join {project.name} on Fine-Tuning Studio",
                f"{request.user.username} invites you to {project.name} as {invitation.get_role_display()}.\n\n"
                f"Sign in and accept: {link}\n",
                None,
                [invitation.email],
            )
            what = f"Invitation sent to {email}. Its link, if you would rather send it yourself"
        except OSError:
            what = f"The email to {email} could not be sent; send them this link yourself"
    return settings_page(request, project, shown_once={"what": what, "value": link})


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


def settings_page(request, project, *, form=None, invite_form=None, shown_once: dict | None = None):
    """The settings page. ``shown_once`` ({"what", "value"}): a new API key or signing secret, rendered in this
    response only (never in a cookie or the session), which no cache keeps."""
    from apps.webhooks.views import section_context

    response = render(
        request,
        "accounts/project_settings.html",
        {
            "form": form or MemberForm(),
            "invite_form": invite_form or InviteForm(prefix="invite"),
            "members": selectors.project_members(project),
            "api_keys": selectors.project_api_keys(project),
            "shown_once": shown_once,
            **section_context(project),
        },
    )
    if shown_once:
        response["Cache-Control"] = "no-store"
    return response


def _api_key_action(request, project):
    """Create (the key is shown once, in this response) or revoke one of the project's API keys."""
    from apps.api import services as api_services

    try:
        if "create_key" in request.POST:
            key, raw = api_services.create_api_key(
                project=project, user=request.user, name=request.POST.get("name", "")
            )
            shown = {"what": f"New API key {key.name or key.prefix}", "value": raw}
            return settings_page(request, project, shown_once=shown)
        else:
            key = api_services.revoke_api_key(project=project, key_id=int(request.POST["revoke_key"]))
            messages.success(request, f"Revoked {key}. It stops working at once.")
    except (api_services.ApiKeyError, ValueError) as exc:
        messages.error(request, str(exc))
    return redirect("project_settings", slug=project.slug)


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
