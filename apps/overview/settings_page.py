"""The project settings page, composed here because it shows every app's part of a project's setup: members and
invitations (accounts), API keys (api) and webhooks (webhooks). Actions that answer with the page live here too."""

from django.contrib import messages
from django.core.mail import send_mail
from django.shortcuts import redirect, render
from django.urls import reverse

from apps.accounts import selectors as account_selectors
from apps.accounts import services as account_services
from apps.accounts.forms import InviteForm, MemberForm
from apps.accounts.permissions import project_view
from apps.api import selectors as api_selectors
from apps.api import services as api_services
from apps.webhooks import services as webhook_services
from apps.webhooks.views import section_context


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
                account_services.remove_member(project=project, membership_id=int(request.POST["remove"]))
                messages.success(request, "Member removed.")
            except (account_services.MembershipError, ValueError) as exc:
                messages.error(request, str(exc))
            return redirect("project_settings", slug=project.slug)
        if form.is_valid():
            try:
                m = account_services.set_member_role(project=project, **form.cleaned_data)
                messages.success(request, f"{m.user.username} is now {m.get_role_display()} in {project.name}.")
                return redirect("project_settings", slug=project.slug)
            except account_services.MembershipError as exc:
                form.add_error(None, str(exc))
    return settings_page(request, project, form=form)


def _invite(request, project):
    """An invitation: its join link is shown once, in this response; with an email address it is also mailed."""
    form = InviteForm(request.POST, prefix="invite")
    if not form.is_valid():
        return settings_page(request, project, invite_form=form)
    email = form.cleaned_data["email"]
    invitation, token = account_services.invite(
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


def settings_page(request, project, *, form=None, invite_form=None, shown_once: dict | None = None):
    """The settings page. ``shown_once`` ({"what", "value"}): a new API key or signing secret, rendered in this
    response only (never in a cookie or the session), which no cache keeps."""
    response = render(
        request,
        "overview/project_settings.html",
        {
            "form": form or MemberForm(),
            "invite_form": invite_form or InviteForm(prefix="invite"),
            "members": account_selectors.project_members(project),
            "api_keys": api_selectors.project_api_keys(project),
            "shown_once": shown_once,
            **section_context(project),
        },
    )
    if shown_once:
        response["Cache-Control"] = "no-store"
    return response


def _api_key_action(request, project):
    """Create (the key is shown once, in this response) or revoke one of the project's API keys."""
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


def _back_to_webhooks(project):
    return redirect(f"/p/{project.slug}/settings/#webhooks")


@project_view("manage")
def webhook_endpoints(request, project):
    if request.method != "POST":
        return _back_to_webhooks(project)
    try:
        if "delete" in request.POST:
            endpoint = webhook_services.delete_endpoint(project=project, endpoint_id=int(request.POST["delete"]))
            messages.success(request, f"Deleted the webhook endpoint {endpoint.url}.")
        else:
            endpoint, secret = webhook_services.create_endpoint(
                project=project,
                url=request.POST.get("url", ""),
                events=request.POST.getlist("events"),
                user=request.user,
            )
            shown = {"what": f"Added {endpoint.url}. Its signing secret", "value": secret}
            return settings_page(request, project, shown_once=shown)
    except (webhook_services.WebhookError, ValueError) as exc:
        messages.error(request, str(exc))
    return _back_to_webhooks(project)
