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
        from . import check_tasks  # noqa: F401  registers evaluations.run_checks with Celery
