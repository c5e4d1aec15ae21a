from django.apps import AppConfig


class ApiConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.api"
    label = "api"
    # (label, url name, capability): the project's tab bar (apps/accounts/context_processors.py)
    project_tabs = (("Playground", "playground", "playground", "serve"),)

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from apps.runs import methods
        from apps.runs.models import Run

        from . import graders, receivers

        if graders.call_model_for not in methods.GRADER_MODEL_CALLERS:  # training's model graders reach the
            methods.GRADER_MODEL_CALLERS.append(graders.call_model_for)  # project's models and judge through here

        post_save.connect(receivers.on_run_saved, sender=Run, dispatch_uid="api.adopt_new_runs")
