from django.apps import AppConfig


class ApiConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.api"
    label = "api"
    # (label, url name, capability): the project's tab bar (apps/accounts/context_processors.py)
    project_tabs = (("Playground", "playground", "playground", "serve"),)
