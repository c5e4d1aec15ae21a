"""`manage.py launch_run --project SLUG --dataset-version N --base-model NAME [--preset P] [--epochs E] [--wait]`"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.commands import project_from
from apps.fleet.selectors import SilenceWatch
from apps.runs import base_models, launching
from apps.runs.models import Run, RunStatus
from apps.runs.selectors import run_queue


class Command(BaseCommand):
    help = "Queue a fine-tuning run (task runs.train_run on queue gpu) and print its id; --wait follows it."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--dataset-version", required=True, type=int, help="frozen dataset version number")
        parser.add_argument("--base-model", default=base_models.SHIPPED_MODEL_NAME, help="registered base model name")
        parser.add_argument("--preset", default="quick", choices=sorted(launching.PRESETS))
        parser.add_argument("--epochs", type=float)
        parser.add_argument("--max-steps", type=int)
        parser.add_argument("--wait", action="store_true", help="follow progress; exit 0 only if the run succeeds")
        parser.add_argument("--poll", type=float, default=2.0, help="seconds between progress lines with --wait")

    def handle(self, *args, **opts):
        project = project_from(opts["project"])
        if opts["base_model"] == base_models.SHIPPED_MODEL_NAME:
            base_models.ensure_shipped_base_model()
        overrides = {"epochs": opts["epochs"], "max_steps": opts["max_steps"]}
        try:
            run = launching.launch_run(
                project=project,
                dataset_version=opts["dataset_version"],
                base_model=opts["base_model"],
                preset=opts["preset"],
                overrides={k: v for k, v in overrides.items() if v is not None},
            )
        except launching.LaunchError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(str(run.pk))
        if not opts["wait"]:
            return
        last, silence = None, SilenceWatch(run_queue(run.pk))
        while True:
            run = Run.objects.get(pk=run.pk)
            line = f"run {run.pk}: {run.status} step {run.step}/{run.total_steps}"
            if line != last:
                self.stderr.write(line)
                last = line
            if not run.is_finished and (news := silence.news()):
                self.stderr.write(news)
            if run.is_finished:
                break
            time.sleep(opts["poll"])
        if run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"Run {run.pk} {run.status}: {run.error or 'no error recorded'}")
        self.stderr.write(f"adapter: {run.adapter_path} (val loss {run.final_val_loss})")
