from django.apps import apps
from django.urls import NoReverseMatch, reverse

from .permissions import projects_for


def project_tabs(request) -> list[dict]:
    """Tabs contributed by each app's AppConfig.project_tabs: (label, url name, capability needed)."""
    project, access = getattr(request, "project", None), getattr(request, "access", None)
    if project is None or access is None:
        return []
    current = request.resolver_match.url_name if request.resolver_match else None
    tabs = []
    for config in apps.get_app_configs():
        for label, url_name, need in getattr(config, "project_tabs", ()):
            if not access.allows(need):
                continue
            try:
                url = reverse(url_name, kwargs={"slug": project.slug})
            except NoReverseMatch:
                continue
            tabs.append({"label": label, "url": url, "active": current == url_name or request.path.startswith(url)})
    return tabs


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
