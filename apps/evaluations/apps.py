from django.apps import AppConfig


class EvaluationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.evaluations"
    label = "evaluations"
    # (label, url name taking `slug`, capability): shown in the project's tab bar when the URL exists
    project_tabs = [
        ("Review queue", "review_queue", "review", "evaluate"),
        ("Evaluations", "evaluation_list", "view", "evaluate"),
        ("Rubrics", "rubric_list", "view", "data"),
    ]

    def ready(self):
        from apps.accounts.permissions import blind_work_asked
        from apps.fleet.queues import TASK_QUEUES

        from . import blind, check_tasks, selectors  # noqa: F401  check_tasks registers evaluations.run_checks

        TASK_QUEUES["evaluations.generate_outputs"] = selectors.evaluation_queue
        blind_work_asked.connect(blind.answer_blind_work_asked, dispatch_uid="evaluations.blind_work_asked")

        from apps.runs.signals import launch_form_asked

        from .graders import on_launch_form_asked

        launch_form_asked.connect(on_launch_form_asked, dispatch_uid="evaluations.launch_form_asked")
