"""How far an evaluation's automatic checks agree with its reviewers.

    python manage.py calibrate_judge --evaluation ID [--bootstrap 1000] [--judge]

For each automatic check of the rubric (and all of them together when there are several), on the pairs
reviewers judged: agreement with and without ties, Cohen's kappa with a 95% item bootstrap interval, and
the confusion table; the same for the project's LLM judge when it has verdicts, with its position
consistency. Checks not yet run on the outputs are run first. The last line is ``kappa=X``: the LLM judge's
with ``--judge``, else the checks together when there are several, else the one check.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.evaluations import automatic, results
from apps.evaluations.models import Evaluation, EvaluationStatus
from apps.evaluations.statistics import PAIR_LABELS


def _f(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.0f}%" if pct else f"{value:.2f}"


class Command(BaseCommand):
    help = "Agreement of the rubric's automatic checks with the reviewers' verdicts (kappa with a bootstrap CI)."

    def add_arguments(self, parser):
        parser.add_argument("--evaluation", type=int, required=True, help="evaluation id")
        parser.add_argument(
            "--bootstrap", type=int, default=1000, help="bootstrap resamples of items for kappa's interval"
        )
        parser.add_argument(
            "--judge", action="store_true", help="end with the LLM judge's kappa instead of the checks'"
        )

    def handle(self, *args, **opts):
        evaluation = Evaluation.objects.select_related("rubric").filter(pk=opts["evaluation"]).first()
        if evaluation is None:
            raise CommandError(f"No evaluation #{opts['evaluation']}.")
        if evaluation.status != EvaluationStatus.READY:
            raise CommandError(
                f"Evaluation #{evaluation.pk} is {evaluation.status}: its outputs are not all generated yet."
            )
        ran = automatic.run_checks(evaluation.pk)
        if ran:
            self.stdout.write(f"Ran {ran} automatic check results that were missing.")
        rows = results.check_calibrations(evaluation, bootstrap=opts["bootstrap"])
        judge = results.judge_report(evaluation, bootstrap=opts["bootstrap"])
        if judge is not None and judge.judged:
            rows.append(
                {
                    "name": f"LLM judge {judge.settings.model if judge.settings else ''} (both orders; position "
                    f"consistency {_f(judge.position_consistency, True)}; {judge.unjudged} pairs unjudged)",
                    "calibration": judge.calibration,
                    "judge": True,
                }
            )
        elif opts["judge"]:
            raise CommandError(f"The LLM judge has no verdicts on evaluation #{evaluation.pk} yet.")
        if not rows:
            raise CommandError(f"Rubric {evaluation.rubric} has no automatic checks: add some in the rubric form.")
        self.stdout.write(
            f"Evaluation #{evaluation.pk} ({evaluation}), rubric {evaluation.rubric}: automatic checks "
            "against the reviewers' item-level verdicts on the pairs they judged."
        )
        self.stdout.write("A check prefers the output that passes over the one that fails, else a tie.\n")
        for row in rows:
            c = row["calibration"]
            self.stdout.write(f"== {row['name']}")
            if not c.pairs:
                self.stdout.write("   no judged pair has results for this check\n")
                continue
            interval = f" (95% CI {_f(c.kappa_low)} to {_f(c.kappa_high)})" if c.kappa_low is not None else ""
            self.stdout.write(
                f"   {c.pairs} pairs on {c.items} items; agreement {_f(c.agreement, True)} with ties, "
                f"{_f(c.agreement_without_ties, True)} without ties ({c.decided_by_both} pairs where both "
                f"picked a side); Cohen's kappa {_f(c.kappa)}{interval}"
            )
            width = max(len(x) for x in PAIR_LABELS) + 2
            self.stdout.write(
                "   " + "people \\ check".ljust(16) + "".join(label.rjust(width) for label in PAIR_LABELS)
            )
            for label, counts in zip(PAIR_LABELS, c.confusion, strict=True):
                self.stdout.write("   " + label.ljust(16) + "".join(str(v).rjust(width) for v in counts))
            self.stdout.write("")
        headline = [r for r in rows if r.get("judge")] if opts["judge"] else [r for r in rows if not r.get("judge")]
        last = (headline or rows)[-1]["calibration"]
        self.stdout.write(f"kappa={_f(last.kappa)}")
