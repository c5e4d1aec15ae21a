from django.core.management.base import BaseCommand, CommandError

from apps.accounts.commands import project_from
from apps.datasets import importing, services


class Command(BaseCommand):
    help = "Export a project's examples, or a frozen version's, to stdout (openai, alpaca or csv)."

    def create_parser(self, prog_name, subcommand, **kwargs):
        # `--version N` is the interface; let it replace Django's own --version flag here.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--version", type=int, help="a frozen version number (default: the live examples)")
        parser.add_argument("--format", default="openai", choices=list(importing.EXPORT_FORMATS))

    def handle(self, *args, **options):
        project = project_from(options["project"])
        try:
            for line in importing.export_lines(
                project=project, file_format=options["format"], version=options["version"]
            ):
                self.stdout.write(line, ending="")
        except services.ExportError as exc:
            raise CommandError(str(exc)) from exc
