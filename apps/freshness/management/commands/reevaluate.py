"""Re-evaluate runs (and the baselines of their latest evaluation) on a newer dataset version's test split.

python manage.py reevaluate --project support --dataset-version 2 [--runs 3,4] [--wait]
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.commands import project_from
from apps.datasets.commands import version_from
from apps.evaluations.models import EvaluationStatus
from apps.evaluations.selectors import evaluation_queue
from apps.fleet.selectors import SilenceWatch
from apps.freshness import services


class Command(BaseCommand):
    help = "Create an evaluation with the same candidates on a newer dataset version and queue its generation."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--dataset-version", type=int, required=True, help="version number to evaluate on")
        parser.add_argument(
            "--runs",
            default="",
            help="comma-separated run ids (default: every finished run not yet evaluated on that version)",
        )
        parser.add_argument(
            "--wait", action="store_true", help="wait until the outputs are generated (a worker must be running)"
        )
        parser.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits at most")

    def handle(self, *args, **opts):
        project = project_from(opts["project"])
        version = version_from(project, opts["dataset_version"])
        run_ids = None
        if opts["runs"].strip():
            parts = [p.strip() for p in opts["runs"].split(",") if p.strip()]
            bad = [p for p in parts if not p.isdigit()]
            if bad:
                raise CommandError(f"--runs takes run ids separated by commas (e.g. 3,4); got {bad[0]!r}.")
            run_ids = [int(p) for p in parts]
        try:
            evaluation = services.reevaluate(project=project, dataset_version=version, run_ids=run_ids)
        except services.EvaluationError as exc:  # ReevaluateError, or create_evaluation's own checks
            raise CommandError(str(exc)) from exc
        labels = ", ".join(evaluation.candidates.order_by("position").values_list("label", flat=True))
        self.stdout.write(
            f"Evaluation #{evaluation.pk} ({evaluation}) on v{version.number}: {labels}; "
            f"{evaluation.total} outputs to generate."
        )
        if not opts["wait"]:
            return
        deadline = time.monotonic() + opts["timeout"]
        last, silence = -1, SilenceWatch(evaluation_queue(evaluation.pk))
        while evaluation.status not in (EvaluationStatus.READY, EvaluationStatus.FAILED):
            if time.monotonic() > deadline:
                raise CommandError(f"Timed out after {opts['timeout']:.0f}s at {evaluation.done}/{evaluation.total}.")
            if news := silence.news():
                self.stdout.write(news)
            if evaluation.done != last:
                self.stdout.write(f"  {evaluation.done}/{evaluation.total} generated")
                last = evaluation.done
            time.sleep(2)
            evaluation.refresh_from_db()
        if evaluation.status == EvaluationStatus.FAILED:
            raise CommandError(f"Generation failed: {evaluation.error}")
        self.stdout.write(
            self.style.SUCCESS(f"Ready for review: {evaluation.done} outputs. {evaluation.get_absolute_url()}")
        )
