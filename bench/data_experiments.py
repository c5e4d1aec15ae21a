"""The demo's data experiments on this machine's CPU, through the product's own command and tasks.

Seeds the demo in a temporary var dir: v1 is the raw data (every imported example as it came, the six flawed
inbox examples -- conflicting answer, near duplicate, "ok", personal data, rambling, off style -- included), v2
the curated data (the 300 approved examples). Then one experiment, both curves on one chart:

    python manage.py scaling_experiment --project <demo> --dataset-version 2 --versus 1 --labels curated,raw \
        --fractions 0.125,0.25,0.5,1 --preset quick --wait

(4 sizes x 2 versions = 8 quick runs on the shipped SmolLM2-135M, each scored on v2's 31 test examples by
similarity and the demo rubric's automatic checks). Tasks run inline (CELERY_TASK_ALWAYS_EAGER).

    .venv/bin/python bench/data_experiments.py [--fractions 0.125,0.25,0.5,1] [--scaling-only] [--keep DIR]

Prints the command's table and sentences, the wall time, and last ``slope=X`` (the curated curve's share of
replies passing every check per doubling of the training examples).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._demo_env import setup_django  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fractions", default="0.125,0.25,0.5,1")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--scaling-only", action="store_true", help="only the curated (v2) curve: 4 runs, not 8")
    parser.add_argument("--steps", type=int, help="the same number of training steps for every size")
    parser.add_argument("--prepare-only", action="store_true", help="seed and freeze, print the command, train nothing")
    parser.add_argument("--keep", default="", help="var dir to use and keep (default: a temporary one)")
    args = parser.parse_args()

    setup_django(args.keep, "ftstudio-experiments-bench-")
    from django.core.management import call_command

    from apps.demo import services as demo
    from apps.runs.base_models import ensure_shipped_base_model

    seeded = demo.seed_demo()
    project = seeded.project
    base_model = ensure_shipped_base_model()
    command = [
        "scaling_experiment",
        "--project",
        project.slug,
        "--dataset-version",
        "2",
        "--fractions",
        args.fractions,
        "--preset",
        args.preset,
        "--base-model",
        base_model.name,
        "--wait",
    ]
    if args.steps:
        command += ["--steps", str(args.steps)]
    if not args.scaling_only:
        raw = project.dataset_versions.get(number=1)
        print(f"raw = v1 {raw.split_counts}; curated = v2")
        command += ["--versus", "1", "--labels", "curated,raw"]
    print("python manage.py " + " ".join(command))
    if args.prepare_only:
        return
    call_command(*command)  # its last lines: "status=finished took=N s", then "slope=X"


if __name__ == "__main__":
    main()
