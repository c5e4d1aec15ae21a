"""`manage.py create_api_key --project SLUG --user USERNAME [--name NAME]`: prints the new key once."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.api import services


class Command(BaseCommand):
    help = "Create an API key for a member of a project; it acts with that member's role there. Printed once."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="the project's slug")
        parser.add_argument("--user", required=True, help="the username the key acts as")
        parser.add_argument("--name", default="", help="a label shown in the project's settings")

    def handle(self, *args, project, user, name, **opts):
        try:
            key, raw = services.create_api_key_for(project_slug=project, username=user, name=name)
        except services.ApiKeyError as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(f"Key {key.prefix}… for {user} in {project}. It is shown only now; store it safely.")
        self.stdout.write(raw)
