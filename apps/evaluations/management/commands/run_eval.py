"""Create an evaluation from the command line and (optionally) wait for its outputs.

python manage.py run_eval --project support --dataset-version 1 --candidates base,prompt,run:3 [--wait]
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.commands import project_from
from apps.datasets.commands import version_from
from apps.evaluations import generation, services
from apps.evaluations.models import EvaluationStatus, Rubric
from apps.evaluations.selectors import evaluation_queue
from apps.fleet.selectors import SilenceWatch
from apps.runs.models import BaseModel


class Command(BaseCommand):
    help = "Create an evaluation (base, prompt baseline and/or tuned runs) and queue its generation on queue gpu."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--dataset-version", type=int, required=True, help="version number")
        parser.add_argument("--candidates", required=True, help="comma-separated: base, prompt, run:ID")
        parser.add_argument(
            "--rubric", help="rubric name (default: the project's most recent rubric); its latest version is used"
        )
        parser.add_argument("--base-model", help="base model name for base/prompt (default: the runs' base model)")
        parser.add_argument("--system-prompt", default="", help="system prompt of the prompt-only baseline")
        parser.add_argument("--few-shot", type=int, default=2, help="train examples shown to the prompt baseline")
        parser.add_argument("--max-new-tokens", type=int, default=96)
        parser.add_argument("--reviewers-per-pair", type=int, default=2)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--wait", action="store_true", help="wait until the outputs are generated (a worker must be running)"
        )
        parser.add_argument("--inline", action="store_true", help="generate in this process instead of a worker")
        parser.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits at most")

    def handle(self, *args, **opts):
        project = project_from(opts["project"])
        version = version_from(project, opts["dataset_version"])
        rubrics = Rubric.objects.filter(project=project)
        rubric = (
            (rubrics.filter(name=opts["rubric"]) if opts["rubric"] else rubrics)
            .order_by("-created_at", "-version")
            .first()
        )
        if rubric is None:
            raise CommandError("No such rubric in this project: write one first (Rubrics tab), or pass --rubric NAME.")
        if opts["rubric"]:
            rubric = rubrics.filter(name=opts["rubric"]).order_by("-version").first()
        base_model = None
        if opts["base_model"]:
            base_model = BaseModel.objects.filter(name=opts["base_model"]).first()
            if base_model is None:
                raise CommandError(f"No base model named {opts['base_model']!r}.")
        try:
            candidates = services.parse_candidates(opts["candidates"])
            for spec in candidates:
                if spec.kind == "prompt":
                    spec.system_prompt, spec.few_shot = opts["system_prompt"], opts["few_shot"]
            evaluation = services.create_evaluation(
                project=project,
                dataset_version=version,
                rubric=rubric,
                candidates=candidates,
                base_model=base_model,
                name=opts["name"],
                max_new_tokens=opts["max_new_tokens"],
                seed=opts["seed"],
                reviewers_per_pair=opts["reviewers_per_pair"],
                enqueue=not opts["inline"],
            )
        except services.EvaluationError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Evaluation #{evaluation.pk} ({evaluation}): {evaluation.total} outputs to generate.")
        if opts["inline"]:
            evaluation = generation.run_generation(evaluation.pk)
        elif opts["wait"]:
            deadline = time.monotonic() + opts["timeout"]
            last, silence = -1, SilenceWatch(evaluation_queue(evaluation.pk))
            while evaluation.status not in (EvaluationStatus.READY, EvaluationStatus.FAILED):
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"Timed out after {opts['timeout']:.0f}s at {evaluation.done}/{evaluation.total}."
                    )
                if news := silence.news():
                    self.stdout.write(news)
                if evaluation.done != last:
                    self.stdout.write(f"  {evaluation.done}/{evaluation.total} generated")
                    last = evaluation.done
                time.sleep(2)
                evaluation.refresh_from_db()
        else:
            return
        if evaluation.status == EvaluationStatus.FAILED:
            raise CommandError(f"Generation failed: {evaluation.error}")
        self.stdout.write(
            self.style.SUCCESS(f"Ready for review: {evaluation.done} outputs. {evaluation.get_absolute_url()}")
        )
