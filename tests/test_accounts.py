import re

import pytest
from django.test import Client
from django.urls import reverse

from apps.accounts import services
from apps.accounts.models import Membership, Role
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_wrong_login_shows_a_message_not_an_error(client, team):
    response = client.post(reverse("login"), {"username": "designer", "password": "wrong"})
    assert response.status_code == 200
    assert "didn't match" in response.content.decode()


def test_right_login_lands_on_the_project_list(client, team, password):
    response = client.post(reverse("login"), {"username": "designer", "password": password}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("project_list")
    assert "Support replies" in response.content.decode()


def test_creating_a_project_makes_its_creator_pm(client):
    user = UserFactory(username="maker")
    client.force_login(user)
    response = client.post(reverse("project_create"), {"name": "Support replies in house style"})
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.PM
    assert response["Location"] == f"/p/{membership.project.slug}/"


def test_two_projects_with_the_same_name_get_distinct_slugs(db):
    user = UserFactory()
    a = services.create_project(name="Replies", created_by=user)
    b = services.create_project(name="Replies", created_by=user)
    assert a.slug != b.slug


def test_pm_changes_a_member_s_role(team):
    client = team.client("pm")
    client.post(reverse("project_settings", args=[team.project.slug]), {"username": "designer", "role": "reviewer"})
    assert Membership.objects.get(user=team.designer, project=team.project).role == Role.REVIEWER


def test_the_role_form_adds_nobody_and_never_says_whether_a_username_exists(team):
    UserFactory(username="newbie")
    UserFactory(username="root", is_staff=True, is_superuser=True)
    url = reverse("project_settings", args=[team.project.slug])
    answers = set()
    for name in ("newbie", "root", "ghost"):
        page = team.client("pm").post(url, {"username": name, "role": "reviewer"}).content.decode()
        answers.add(re.search(r'role="alert">(.*?)</div>', page, re.S).group(1).replace(name, "NAME"))
    assert len(answers) == 1 and "join by invitation" in answers.pop()
    assert not Membership.objects.filter(project=team.project, user__username__in=["newbie", "root"]).exists()


def invite(team, role="reviewer", email="") -> str:
    page = team.client("pm").post(
        reverse("project_settings", args=[team.project.slug]),
        {"invite": "1", "invite-role": role, "invite-email": email},
    )
    assert page.status_code == 200 and page["Cache-Control"] == "no-store"
    return re.search(r"<code>https?://[^/]+(/invitations/[\w-]+/)</code>", page.content.decode()).group(1)


def test_an_invitation_by_email_is_accepted_by_that_user_only_and_once(team, mailoutbox):
    link = invite(team, email="Ann@Example.com")
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["ann@example.com"] and link in mailoutbox[0].body
    ann = UserFactory(username="ann", email="ann@example.com")
    other = Client()
    other.force_login(UserFactory(username="bob", email="bob@example.com"))
    assert "another email address" in other.post(link).content.decode()
    client = Client()
    client.force_login(ann)
    assert "Support replies" in client.get(link).content.decode()
    assert not Membership.objects.filter(user=ann).exists()  # opening the link is not accepting it
    assert client.post(link).status_code == 302
    assert Membership.objects.get(user=ann, project=team.project).role == Role.REVIEWER
    again = other.post(link)
    assert again.status_code == 410 and "used or has expired" in again.content.decode()


def test_a_join_link_needs_a_signed_in_user_and_works_once(team):
    link = invite(team, role="designer")
    assert Client().get(link).status_code == 302  # to the log-in page
    carl = UserFactory(username="carl")
    client = Client()
    client.force_login(carl)
    client.post(link)
    assert Membership.objects.get(user=carl, project=team.project).role == Role.DESIGNER
    dana = Client()
    dana.force_login(UserFactory(username="dana"))
    assert dana.post(link).status_code == 410


def test_the_last_pm_cannot_be_demoted_or_removed(team):
    with pytest.raises(services.MembershipError, match="only PM"):
        services.set_member_role(project=team.project, username="pm", role="designer")
    pm_membership = Membership.objects.get(project=team.project, user=team.pm)
    with pytest.raises(services.MembershipError, match="only PM"):
        services.remove_member(project=team.project, membership_id=pm_membership.pk)


def test_reviewer_cannot_open_project_settings(team):
    assert team.client("reviewer").get(reverse("project_settings", args=[team.project.slug])).status_code == 403


def test_project_tabs_follow_the_role(team):
    page = team.client("reviewer").get(reverse("project_detail", args=[team.project.slug])).content.decode()
    assert "Settings" not in page
    page = team.client("pm").get(reverse("project_detail", args=[team.project.slug])).content.decode()
    assert "Settings" in page


def test_htmx_requests_carry_the_csrf_token(team):
    page = team.client("pm").get(reverse("project_detail", args=[team.project.slug])).content.decode()
    assert 'hx-headers=\'{"X-CSRFToken":' in page
    assert "htmx" in page


def test_login_ignores_a_next_that_leaves_the_site(client, team, password):
    response = client.post(
        reverse("login"), {"username": "designer", "password": password, "next": "https://elsewhere.example/phish"}
    )
    assert response.status_code == 302 and response["Location"] == reverse("project_list")


def _wrong(client, url, username="designer", address="10.0.0.1"):
    return client.post(url, {"username": username, "password": "wrong"}, REMOTE_ADDR=address)


def test_repeated_wrong_passwords_lock_out_that_user_from_that_address(client, team, password, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert "didn't match" in _wrong(client, reverse("login")).content.decode()
    locked = _wrong(client, reverse("login"))
    assert locked.status_code == 429
    assert "Too many wrong passwords for “designer” from this address" in locked.content.decode()
    assert "locked for 15 minutes" in locked.content.decode()
    # even the right password is refused while locked
    right = client.post(reverse("login"), {"username": "designer", "password": password}, REMOTE_ADDR="10.0.0.1")
    assert right.status_code == 429 and "_auth_user_id" not in client.session
    # other users from that address, and that user from elsewhere, still log in
    other = client.post(reverse("login"), {"username": "pm", "password": password}, REMOTE_ADDR="10.0.0.1")
    assert other.status_code == 302
    client.logout()
    elsewhere = client.post(reverse("login"), {"username": "designer", "password": password}, REMOTE_ADDR="10.0.0.2")
    assert elsewhere.status_code == 302
    # tests that log in with force_login are never throttled
    client.force_login(team.designer)
    assert client.get(reverse("project_list")).status_code == 200


def test_a_successful_login_resets_the_count(client, team, password, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _wrong(client, reverse("login"))
    assert (
        client.post(
            reverse("login"), {"username": "designer", "password": password}, REMOTE_ADDR="10.0.0.1"
        ).status_code
        == 302
    )
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _wrong(client, reverse("login")).status_code == 200


def test_the_admin_login_is_throttled_too(client, team, password, settings):
    team.designer.is_staff = True
    team.designer.save()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = _wrong(client, "/admin/login/")
    assert response.status_code == 429 and "Too many wrong passwords" in response.content.decode()
    right = client.post("/admin/login/", {"username": "designer", "password": password}, REMOTE_ADDR="10.0.0.1")
    assert right.status_code == 429


def test_client_login_without_a_request_still_works_and_is_not_counted(team, password, settings):
    from axes.models import AccessAttempt
    from django.test import Client

    for _ in range(settings.AXES_FAILURE_LIMIT + 1):
        assert not Client().login(username="designer", password="wrong")
    assert Client().login(username="designer", password=password)
    assert not AccessAttempt.objects.exists()


def _tab_bar(page: str) -> str:
    return page[page.index('<nav class="tabs"') : page.index("</nav>", page.index('<nav class="tabs"'))]


def test_tabs_are_grouped_by_stage_with_each_roles_own_stage_first(team):
    slug = team.project.slug
    designer = _tab_bar(team.client("designer").get(reverse("project_detail", args=[slug])).content.decode())
    assert (
        designer.index('aria-label="Data"')
        < designer.index('aria-label="Prompt"')
        < designer.index('aria-label="Serve"')
    )
    assert designer.index(">Examples<") < designer.index(">Rubrics<")  # rubrics are a designer's data work
    reviewer = _tab_bar(team.client("reviewer").get(reverse("project_detail", args=[slug])).content.decode())
    assert reviewer.index('aria-label="Evaluate"') < reviewer.index('aria-label="Data"')
    assert reviewer.index(">Review queue<") < reviewer.index(">Examples<")
    assert "Prompts" not in reviewer and "Playground" not in reviewer
    pm = _tab_bar(team.client("pm").get(reverse("project_detail", args=[slug])).content.decode())
    assert pm.index('aria-label="Train"') < pm.index('aria-label="Data"')


def test_a_page_under_another_tabs_address_marks_only_its_own_tab(team):
    page = team.client("designer").get(reverse("quality_report", args=[team.project.slug])).content.decode()
    bar = _tab_bar(page)
    assert bar.count('aria-current="page"') == 1
    assert 'aria-current="page">Quality<' in bar
