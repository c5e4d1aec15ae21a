from django.apps import apps
from django.urls import NoReverseMatch, reverse

from .models import Role
from .permissions import projects_for

# The stages a team goes through, in order; each app's tabs name their stage (AppConfig.project_tabs).
STAGES = {"data": "Data", "prompt": "Prompt", "train": "Train", "evaluate": "Evaluate", "serve": "Serve"}
# The stage each role works in most comes first in its bar.
ROLE_FIRST_STAGE = {Role.DESIGNER: "data", Role.PM: "train", Role.REVIEWER: "evaluate"}


def project_tabs(request) -> list[dict]:
    """The project's tabs grouped by stage: ``[{"stage": "Data", "tabs": [{"label", "url", "active"}]}]``.
    Tabs are contributed by each app's AppConfig.project_tabs: (label, url name, capability needed, stage). The
    tab whose address is the longest prefix of the page's is the active one (Quality lives under Examples)."""
    project, access = getattr(request, "project", None), getattr(request, "access", None)
    if project is None or access is None:
        return []
    current = request.resolver_match.url_name if request.resolver_match else None
    by_stage: dict[str, list[dict]] = {stage: [] for stage in STAGES}
    for config in apps.get_app_configs():
        for label, url_name, need, stage in getattr(config, "project_tabs", ()):
            if not access.allows(need):
                continue
            try:
                url = reverse(url_name, kwargs={"slug": project.slug})
            except NoReverseMatch:
                continue
            by_stage[stage].append({"label": label, "url": url, "url_name": url_name, "active": False})
    tabs = [tab for stage_tabs in by_stage.values() for tab in stage_tabs]
    exact = [tab for tab in tabs if tab["url_name"] == current]
    prefixed = sorted((tab for tab in tabs if request.path.startswith(tab["url"])), key=lambda tab: len(tab["url"]))
    active = exact[0] if exact else (prefixed[-1] if prefixed else None)
    if active is not None:
        active["active"] = True
    order = list(STAGES)
    first = ROLE_FIRST_STAGE.get(access.role)
    if first and not access.is_admin:
        order.remove(first)
        order.insert(0, first)
    return [{"stage": STAGES[stage], "tabs": by_stage[stage]} for stage in order if by_stage[stage]]


def project_nav(request):
    """The project switcher, the current project's access and its tabs, for every template."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "nav_projects": projects_for(user).only("name", "slug")[:50],
        "project": getattr(request, "project", None),
        "access": getattr(request, "access", None),
        "project_tab_links": project_tabs(request),
    }
