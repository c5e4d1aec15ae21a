from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.datasets"
    label = "datasets"
    # (label, url name taking `slug`, capability): shown in the project's tab bar when the URL exists
    project_tabs = [
        ("Examples", "example_list", "view", "data"),
        ("Quality", "quality_report", "view", "data"),
        ("Versions", "version_list", "view", "data"),
        ("Preferences", "preference_list", "view", "data"),
    ]
