from django.apps import AppConfig


class RunsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.runs"
    label = "runs"
    # (label, url name taking `slug`, capability, stage): shown in the project's tab bar when the URL exists
    project_tabs = [("Runs", "run_list", "view", "train")]

    def ready(self) -> None:
        from celery.signals import worker_init, worker_shutting_down

        from apps.fleet.queues import TASK_QUEUES

        from . import selectors, worker_hooks

        TASK_QUEUES.update({"runs.train_run": selectors.run_queue, "runs.join_distributed_run": selectors.run_queue})
        worker_init.connect(worker_hooks.check_artifact_store, dispatch_uid="runs.check_artifact_store")
        worker_shutting_down.connect(worker_hooks.stop_long_tasks_at_a_checkpoint, dispatch_uid="runs.warm_shutdown")
