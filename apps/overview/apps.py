from django.apps import AppConfig


class OverviewConfig(AppConfig):
    """The project home: composed from every app's reads, so it stands above them all (docs/ARCHITECTURE.md)."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.overview"
    label = "overview"
