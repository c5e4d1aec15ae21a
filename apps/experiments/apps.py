from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.experiments"
    label = "experiments"
    # (label, url name taking `slug`, capability): shown in the project's tab bar when the URL exists
    project_tabs = [("Experiments", "experiment_list", "view", "train")]

    def ready(self) -> None:
        """Advance experiments when their runs, generations and check passes end."""
        from apps.evaluations.signals import checks_ended, generation_ended
        from apps.runs.signals import run_ended

        from . import receivers

        run_ended.connect(receivers.on_run_ended, dispatch_uid="experiments.run_ended")
        generation_ended.connect(receivers.on_evaluation_step_ended, dispatch_uid="experiments.generation_ended")
        checks_ended.connect(receivers.on_evaluation_step_ended, dispatch_uid="experiments.checks_ended")
