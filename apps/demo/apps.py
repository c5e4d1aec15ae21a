from django.apps import AppConfig


class DemoConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.demo"
    label = "demo"

    def ready(self) -> None:
        """Offer the demo's one-click experiment on the experiment list."""
        from apps.experiments.signals import experiment_list_asked

        from . import receivers

        experiment_list_asked.connect(receivers.on_experiment_list_asked, dispatch_uid="demo.experiment_list_asked")
