from django.apps import AppConfig


class RunsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.runs"
    label = "runs"
    # (label, url name taking `slug`, capability, stage): shown in the project's tab bar when the URL exists
    project_tabs = [("Runs", "run_list", "view", "train")]
