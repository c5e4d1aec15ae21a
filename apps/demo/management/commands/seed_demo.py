from django.core.management.base import BaseCommand, CommandError

from apps.accounts.models import Project
from apps.demo import services


class Command(BaseCommand):
    help = (
        "Create the demo project (house-style support replies): members for each role, generated examples "
        "with a few flawed ones, splits, a frozen version, a rubric and the shipped base model. Safe to run twice."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--if-empty",
            action="store_true",
            help="only seed when the database has no project yet (what `make run` uses)",
        )
        parser.add_argument("--size", type=int, default=300, help="number of clean examples (default 300)")
        parser.add_argument("--seed", type=int, default=7, help="random seed of the generator (default 7)")

    def handle(self, *args, if_empty: bool, size: int, seed: int, **options):
        if size < 20:
            raise CommandError(f"--size {size} is too small: the demo needs at least 20 examples to split 80/10/10.")
        if if_empty and Project.objects.exists():
            self.stdout.write("The database already has projects: the demo is not seeded again.")
            return
        try:
            result = services.seed_demo(size=size, seed=seed)
        except (services.DemoError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        project = result.project
        if not result.created:
            self.stdout.write(
                f"The demo project '{project.name}' exists (/p/{project.slug}/); nothing changed. "
                "Its logins were printed when it was created."
            )
            return
        self.stdout.write(self.style.SUCCESS(f"Seeded the demo project '{project.name}' at /p/{project.slug}/."))
        for note in result.notes:
            self.stdout.write(f"  {note}")
        if result.logins:
            path = services.save_logins(result.logins)
            self.stdout.write("Demo logins (shown once; also saved in " + path + "):")
            for username, password in result.logins.items():
                role = services.DEMO_USERS[username].label
                self.stdout.write(f"  {role:<9} {username} / {password}")
