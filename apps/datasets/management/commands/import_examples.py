from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.commands import project_from
from apps.datasets import importing


class Command(BaseCommand):
    help = "Import examples (OpenAI chat JSONL, Alpaca JSONL or CSV) into a project. An invalid file imports nothing."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--format", default="auto", choices=["auto", "openai", "alpaca", "csv"])
        parser.add_argument("--user", help="username recorded as the importer")
        parser.add_argument("--max-tokens", type=int, help="warn above this many tokens (default: the model's context)")

    def handle(self, *args, **options):
        project = project_from(options["project"])
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user {options['user']!r}.")
        report = importing.import_examples(
            project=project,
            path_or_file=options["path"],
            file_format=options["format"],
            user=user,
            max_tokens=options["max_tokens"],
        )
        for warning in report.warnings:
            self.stderr.write(f"warning: {warning}")
        if report.errors:
            for error in report.errors:
                self.stderr.write(f"error: {error}")
            raise CommandError(
                f"{len(report.errors)} problem{'s' if len(report.errors) > 1 else ''} in "
                f"{options['path']}: nothing was imported."
            )
        self.stdout.write(
            f"Imported {report.imported} examples ({report.file_format}); skipped "
            f"{report.skipped_duplicates} already in {project.slug}; {len(report.warnings)} warnings."
        )
