from django.core.management.base import BaseCommand, CommandError

from ftstudio.celery import ping


class Command(BaseCommand):
    help = "Send a ping task through the broker and wait for a worker's answer."

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=30)

    def handle(self, *args, timeout: float, **options):
        try:
            answer = ping.apply_async(queue="default").get(timeout=timeout)
        except Exception as exc:  # timeout or broker error: say which
            raise CommandError(
                f"No worker answered the ping within {timeout:.0f} s ({type(exc).__name__}: {exc})."
            ) from exc
        self.stdout.write(f"worker answered: {answer}")
