"""Launch a data-scaling experiment (or curated vs raw with --versus) and print its table.

    python manage.py scaling_experiment --project support --dataset-version 3 [--versus 4] \
        [--fractions 0.125,0.25,0.5,1] [--preset quick] [--steps 30] [--wait]

The last line is ``slope=X``: the first version's score per doubling of the training examples (the share of
test replies passing every automatic check when the rubric has checks, else similarity to the ideal reply).
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.commands import project_from
from apps.evaluations.models import Rubric
from apps.experiments import selectors, services
from apps.experiments.models import Experiment
from apps.fleet.selectors import SilenceWatch


class Command(BaseCommand):
    help = "Train on nested subsets of a version's train split, score each on its test split, fit score ~ a + b log2 n."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--dataset-version", type=int, required=True, help="version number")
        parser.add_argument("--versus", type=int, help="a second version on the same chart (e.g. the curated one)")
        parser.add_argument("--labels", default="", help='names of the versions, e.g. "raw,curated"')
        parser.add_argument("--fractions", default="0.125,0.25,0.5,1", help="shares of the train split")
        parser.add_argument("--preset", default="quick")
        parser.add_argument(
            "--steps",
            type=int,
            help="the same number of training steps for every size (smaller subsets get more epochs); "
            "default: the preset's epochs",
        )
        parser.add_argument("--base-model", help="base model name (default: the first registered)")
        parser.add_argument(
            "--rubric", help="rubric name (default: the project's most recent); its automatic checks score"
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--wait", action="store_true", help="wait until every point is scored (a worker must run)")
        parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds --wait waits at most")

    def handle(self, *args, **opts):
        project = project_from(opts["project"])
        rubric = None
        if opts["rubric"]:
            rubric = Rubric.objects.filter(project=project, name=opts["rubric"]).order_by("-version").first()
            if rubric is None:
                raise CommandError(f"No rubric named {opts['rubric']!r} in {project.slug}.")
        versions = [opts["dataset_version"]] + ([opts["versus"]] if opts["versus"] else [])
        labels = [s.strip() for s in opts["labels"].split(",") if s.strip()]
        try:
            started = time.monotonic()  # before the launch: with inline tasks the whole experiment runs inside it
            experiment = services.launch_experiment(
                project=project,
                versions=versions,
                fractions=opts["fractions"],
                preset=opts["preset"],
                base_model=opts["base_model"],
                rubric=rubric,
                seed=opts["seed"],
                steps=opts["steps"],
                labels=labels,
            )
        except services.ExperimentError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Experiment #{experiment.pk} ({experiment}): "
            f"{experiment.arms.count() * len(experiment.fractions)} runs queued."
        )
        if opts["wait"]:
            last, silence = "", SilenceWatch()
            while True:
                status = services.advance_experiment(experiment.pk)  # also advances it with no beat running
                if status != "running":
                    break
                if time.monotonic() - started > opts["timeout"]:
                    raise CommandError(
                        f"Timed out after {opts['timeout']:.0f}s; the experiment goes on: "
                        f"{experiment.get_absolute_url()}"
                    )
                stages = ", ".join(r.point.stage for r in selectors.experiment_result(experiment).arms[0].rows)
                if news := silence.news():
                    self.stdout.write(news)
                if stages != last:
                    self.stdout.write(f"  [{time.monotonic() - started:.0f}s] {stages}")
                    last = stages
                time.sleep(5)
        self.print_result(
            Experiment.objects.get(pk=experiment.pk), time.monotonic() - started if opts["wait"] else None
        )

    def print_result(self, experiment: Experiment, seconds: float | None) -> None:
        result = selectors.experiment_result(experiment)
        headers = ["data", "examples", "version", "run", "stage", *(f"{h} (95% CI)" for h in result.headers)]
        rows = []
        for arm in result.arms:
            for row in arm.rows:
                cells = [f"{m.mean:.3f} ({m.low:.3f}-{m.high:.3f})" if m else "-" for m in row.cells]
                rows.append(
                    [
                        f"{arm.arm.label} {row.point.share}",
                        str(row.point.n_train),
                        f"v{row.point.version.number}",
                        f"#{row.point.run_id}",
                        row.point.stage,
                        *cells,
                    ]
                )
        widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
        for line in [headers, *rows]:
            self.stdout.write("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        for panel in result.panels:
            for label, sentence in panel["sentences"]:
                self.stdout.write(f"{label + ': ' if label else ''}{sentence}")
            if panel["verdict"]:
                self.stdout.write(panel["verdict"])
        if seconds is not None:
            self.stdout.write(f"status={experiment.status} took={seconds:.0f}s")
        slope = result.slope
        self.stdout.write(f"slope={slope:.4f}" if slope is not None else "slope=pending")
