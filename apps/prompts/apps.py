from django.apps import AppConfig


class PromptsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.prompts"
    label = "prompts"
    # (label, url name taking `slug`, capability): shown in the project's tab bar
    project_tabs = [("Prompts", "prompt_workspace", "label", "prompt")]  # PMs and designers; not in reviewers' bar
