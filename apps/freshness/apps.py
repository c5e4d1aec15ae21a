from django.apps import AppConfig


class FreshnessConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.freshness"
    label = "freshness"
    # (label, url name taking `slug`, capability): shown in the project's tab bar
    project_tabs = [("Current data", "freshness", "view", "evaluate")]
