from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.experiments"
    label = "experiments"
    # (label, url name taking `slug`, capability): shown in the project's tab bar when the URL exists
    project_tabs = [("Experiments", "experiment_list", "view", "train")]

    def ready(self) -> None:
        from . import signals  # noqa: F401 - advance experiments when their runs, generations and checks end
