from django.apps import AppConfig


class PromptsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.prompts"
    label = "prompts"
    # (label, url name taking `slug`, capability): shown in the project's tab bar
    project_tabs = [("Prompts", "prompt_workspace", "label", "prompt")]  # PMs and designers; not in reviewers' bar

    def ready(self) -> None:
        """Answer the run and evaluation forms with the project's scored prompt versions."""
        from apps.evaluations.signals import evaluation_form_asked
        from apps.runs.signals import launch_form_asked

        from . import receivers

        launch_form_asked.connect(receivers.on_launch_form_asked, dispatch_uid="prompts.launch_form_asked")
        evaluation_form_asked.connect(receivers.on_evaluation_form_asked, dispatch_uid="prompts.evaluation_form")
