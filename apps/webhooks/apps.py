from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.webhooks"
    label = "webhooks"

    def ready(self) -> None:
        from apps.evaluations.signals import evaluation_ready, evaluation_reviewed
        from apps.runs.signals import run_ended

        from . import receivers

        run_ended.connect(receivers.on_run_ended, dispatch_uid="webhooks.run_ended")
        evaluation_ready.connect(receivers.on_evaluation_ready, dispatch_uid="webhooks.evaluation_ready")
        evaluation_reviewed.connect(receivers.on_evaluation_reviewed, dispatch_uid="webhooks.evaluation_reviewed")
