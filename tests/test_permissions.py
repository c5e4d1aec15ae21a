"""The role matrix, table-driven over every project URL that exists.

Every URL under /p/<slug>/ must be a view wrapped in `project_view`, which declares the capability it
needs; this test discovers them all, so a new view is covered the moment its URL is added. For each
one it checks: anonymous users are sent to the login page, outsiders get 404 (the project is not
even acknowledged), members whose role lacks the capability get 403, and members who have it are
let through (they may still get 404 for a made-up object id, never 403).
"""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from apps.accounts.permissions import role_can

ROLES = ("designer", "pm", "reviewer")


def _walk(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p


def _fill(route: str, slug: str) -> str:
    def sub(match):
        converter, name = match.group(1) or "str", match.group(2)
        if name == "slug":
            return slug
        return (
            "999999" if converter == "int" else ("00000000-0000-0000-0000-000000000000" if converter == "uuid" else "x")
        )

    return "/" + re.sub(r"<(?:(\w+):)?(\w+)>", sub, route)


PROJECT_URLS = [(route, p) for route, p in _walk(get_resolver().url_patterns) if "<slug:slug>" in route]


def test_every_project_url_goes_through_the_permission_module():
    unguarded = [route for route, p in PROJECT_URLS if not hasattr(p.callback, "required_capability")]
    assert not unguarded, f"project views not wrapped in project_view(): {unguarded}"
    assert len(PROJECT_URLS) >= 2


@pytest.mark.parametrize("route,pattern", PROJECT_URLS, ids=[r for r, _ in PROJECT_URLS])
def test_role_matrix(team, route, pattern):
    view = pattern.callback
    url = _fill(route, team.project.slug)

    anonymous = team.client("anonymous").get(url)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"], url

    assert team.client("outsider").get(url).status_code == 404, f"outsider reached {url}"
    assert team.client("outsider").post(url).status_code == 404, f"outsider posted to {url}"

    for role in ROLES:
        client = team.client(role)
        status = client.get(url).status_code
        if role_can(role, view.required_capability):
            assert status != 403, f"{role} should be allowed to GET {url}"
            if (
                re.fullmatch(r"/p/[\w-]+/(?:[\w-]+/)*", url)
                and url.count("999999") == 0
                and "/x/" not in url
                and "00000000-0000-0000-0000-000000000000" not in url
            ):
                assert status in (200, 302, 405), f"{role} GET {url} -> {status}"
        else:
            assert status == 403, f"{role} should get 403 on GET {url}, got {status}"
        if not role_can(role, view.required_post_capability):
            assert client.post(url).status_code == 403, f"{role} should get 403 on POST {url}"


def test_outsider_never_sees_another_projects_name(team):
    response = team.client("outsider").get("/projects/")
    assert team.project.name not in response.content.decode()
    assert team.other_project.name in response.content.decode()
