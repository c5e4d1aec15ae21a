"""The demo rubric's automatic checks against (scripted) reviewer judgments of a real demo evaluation.

    .venv/bin/python bench/demo_loop.py --keep /tmp/demo          # seeds, trains the quick run, evaluates
    .venv/bin/python bench/demo_calibration.py /tmp/demo

The outputs are the real ones of the kept demo loop (the rubric's checks ran on them when generation
finished). The judgments are NOT human: the demo's reviewers' pairs are judged by the README screenshot
script's rule (``scripts/readme_screenshots.py`` ``judge_all``: the side passing more of the house-style
checks of ``apps.demo.generator.check_reply`` wins, equal is a tie), through the real assignment, so the
stopping rule applies. Then ``calibrate_judge`` prints each check's agreement table and ``kappa=X`` last.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    var_dir = sys.argv[1]
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "ftstudio.settings",
            "DJANGO_DEBUG": "1",
            "FTSTUDIO_VAR_DIR": var_dir,
            "HF_HUB_OFFLINE": "1",
            "FTSTUDIO_LOG_LEVEL": "WARNING",
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    from apps.evaluations import automatic, selectors
    from apps.evaluations.models import Evaluation
    from scripts.readme_screenshots import judge_all

    call_command("migrate", verbosity=0)  # a demo kept from an older build
    evaluation = Evaluation.objects.order_by("-pk").first()
    started = time.perf_counter()
    print(
        f"evaluation #{evaluation.pk} ({evaluation}); check results written now: {automatic.run_checks(evaluation.pk)} "
        f"({time.perf_counter() - started:.2f} s)"
    )
    judged = judge_all(evaluation)
    totals = selectors.review_totals(evaluation)
    print(
        f"scripted judgments: {judged} of {totals['needed']} without the stopping rule "
        f"({totals['pairs']} pairs x {evaluation.reviewers_per_pair} reviewers)"
    )
    for row in selectors.stopping(evaluation):
        print(f"  {row['a']} vs {row['b']}: {row['outcome'].items} items judged; {row['why']}")
    call_command("calibrate_judge", "--evaluation", str(evaluation.pk))


if __name__ == "__main__":
    main()
