from django.apps import AppConfig


class FleetConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.fleet"
    label = "fleet"

    def ready(self) -> None:
        from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown

        from . import worker_hooks

        celeryd_after_setup.connect(worker_hooks.note_queues, dispatch_uid="fleet.note_queues")
        worker_ready.connect(worker_hooks.start_beating, dispatch_uid="fleet.start_beating")
        worker_shutdown.connect(worker_hooks.stop_beating, dispatch_uid="fleet.stop_beating")
