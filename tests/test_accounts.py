import pytest
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


def test_pm_adds_a_reviewer_and_changes_roles(team):
    UserFactory(username="newbie")
    client = team.client("pm")
    client.post(reverse("project_settings", args=[team.project.slug]), {"username": "newbie", "role": "reviewer"})
    assert Membership.objects.get(user__username="newbie", project=team.project).role == Role.REVIEWER


def test_adding_an_unknown_user_says_so(team):
    response = team.client("pm").post(
        reverse("project_settings", args=[team.project.slug]), {"username": "ghost", "role": "reviewer"}
    )
    assert "No user is called" in response.content.decode()


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
