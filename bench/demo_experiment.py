"""The demo's one-click scaling experiment ("Run the demo scaling experiment" on the Experiments page), end to end
on this machine's CPU: seed the demo, launch exactly what the button launches
(``apps.demo.services.launch_demo_experiment``: the curated version, 3 sizes, the same 30 steps each), and wait
until every point is scored. Tasks run inline (CELERY_TASK_ALWAYS_EAGER), so the clock covers the launch, the
three runs and the three automatic-only evaluations.

    .venv/bin/python bench/demo_experiment.py [--keep DIR]

Prints the load average before and after, the experiment's table and sentences, and last ``took=N s``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._demo_env import setup_django  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", default="", help="var dir to use and keep (default: a temporary one)")
    args = parser.parse_args()

    setup_django(args.keep, "ftstudio-demo-experiment-")
    from apps.demo import services as demo
    from apps.experiments import services
    from apps.experiments.management.commands.scaling_experiment import Command
    from apps.experiments.models import Experiment

    project = demo.seed_demo().project
    plan = demo.demo_experiment_plan(project)
    print(f"plan: v{plan.version.number} sizes {plan.sizes}, {plan.steps} steps each, preset {plan.preset}")
    started = time.monotonic()
    experiment = demo.launch_demo_experiment(project=project)
    while services.advance_experiment(experiment.pk) == "running":
        time.sleep(5)
    took = time.monotonic() - started
    experiment = Experiment.objects.get(pk=experiment.pk)
    Command().print_result(experiment, took)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print(f"took={took:.0f} s")


if __name__ == "__main__":
    main()
