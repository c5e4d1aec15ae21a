from django.apps import AppConfig


class TrafficConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.traffic"
    label = "traffic"
    # (label, url name taking `slug`, capability, stage): shown in the project's tab bar
    project_tabs = [("Traffic", "traffic", "label", "serve")]
