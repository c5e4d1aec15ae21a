from django.apps import AppConfig


class FreshnessConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.freshness"
    label = "freshness"
    # (label, url name taking `slug`, capability): shown in the project's tab bar
    project_tabs = [("Current data", "freshness", "view", "evaluate")]

    def ready(self) -> None:
        """Answer the run and evaluation lists: which are not evaluated on current data (or traffic)."""
        from apps.evaluations.signals import evaluation_list_asked
        from apps.runs.signals import run_list_asked

        from . import receivers

        run_list_asked.connect(receivers.on_run_list_asked, dispatch_uid="freshness.run_list_asked")
        evaluation_list_asked.connect(receivers.on_evaluation_list_asked, dispatch_uid="freshness.evaluation_list")
