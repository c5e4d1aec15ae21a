"""The review page's cost per judgment in its two modes, "winner and per-criterion scores" against "overall winner
only", measured by a scripted reviewer (Playwright driving Debian's chromium) through the real review page.

It seeds the demo in a temporary var dir, and on its curated version creates two evaluations of the base model
against the prompt-only baseline that differ only in their rubric's review mode (the demo rubric, and a copy of it
set to "overall winner only"). Their outputs are stand-ins written without a model (the ideal reply against a
rambling one): the page and the form are what is measured, not the models. A `runserver` serves the app; the
demo reviewer `rui` logs in and judges ``--pairs`` pairs of one evaluation, then of the other, alternating for
``--rounds`` rounds. In "scores" mode the scripted reviewer gives every score the page offers (both sides, every
criterion), as a reviewer using that mode would; in "winner" mode only the winner. Each pair: press a side key,
then Ctrl+Enter.

For each mode it prints the inputs a pair requires (``required`` radio groups on the page), the inputs it offers,
and the product's recorded median seconds per judgment (``Judgment.seconds``: from the pair page being rendered
to the judgment being saved, as the evaluation page shows it). The last line is ``ratio=X``: per round, the
winner-only median over the scores median.

A script's seconds are the interface's cost (page load, filling the form, submitting), not a person's reading
and thinking time.

    .venv/bin/python bench/review_effort.py [--pairs 8] [--rounds 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._demo_env import setup_django  # noqa: E402
from bench._rounds import add_rounds_argument, alternate  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
RAMBLING = "I'm sorry for the inconvenience! As an AI assistant I cannot access your order, but please contact support."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_evaluations(project) -> dict:
    """{"scores": evaluation, "winner": evaluation}: base vs prompt-only on the curated version, outputs written."""
    from apps.datasets.models import DatasetVersion
    from apps.evaluations import generation as evals_generation
    from apps.evaluations import selectors
    from apps.evaluations import services as evals
    from apps.evaluations.models import EvaluationStatus, Generation, ReviewMode, Rubric

    curated = DatasetVersion.objects.filter(project=project, derived_from__isnull=True).order_by("-number").first()
    demo_rubric = Rubric.objects.get(project=project)
    winner_rubric = evals.create_rubric(
        project=project,
        name=f"{demo_rubric.name} (overall only)",
        criteria=evals.criteria_specs(demo_rubric),
        review_mode=ReviewMode.WINNER,
    )
    made = {}
    for mode, rubric in (("scores", demo_rubric), ("winner", winner_rubric)):
        evaluation = evals.create_evaluation(
            project=project,
            dataset_version=curated,
            rubric=rubric,
            candidates=[evals.CandidateSpec("base"), evals.CandidateSpec("prompt", few_shot=2)],
            name=f"Review effort: {mode}",
            reviewers_per_pair=1,
            stop_when_settled=False,
            enqueue=False,
        )
        items = list(selectors.eval_items(evaluation))
        Generation.objects.bulk_create(
            [
                Generation(
                    candidate=c,
                    item=item,
                    output=item.ideal_output if c.kind == "prompt" else RAMBLING,
                    prompt_tokens=100,
                    output_tokens=30,
                    latency_ms=1.0,
                    similarity=0.5,
                )
                for c in evaluation.candidates.all()
                for item in items
            ]
        )
        evals_generation.build_comparisons(evaluation)
        type(evaluation).objects.filter(pk=evaluation.pk).update(status=EvaluationStatus.READY, done=evaluation.total)
        made[mode] = evaluation
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=8, help="pairs judged per mode per round (default 8)")
    parser.add_argument("--keep", default="", help="var dir to use and keep (default: a temporary one)")
    add_rounds_argument(parser)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop here
    setup_django(args.keep, "ftstudio-review-effort-")
    from playwright.sync_api import sync_playwright

    from apps.demo import services as demo
    from apps.evaluations.models import Judgment

    seeded = demo.seed_demo(quality_report=False)
    project = seeded.project
    evaluations = make_evaluations(project)
    pairs_available = min(e.comparisons.count() for e in evaluations.values())
    if args.pairs * args.rounds > pairs_available:
        raise SystemExit(f"--pairs x --rounds = {args.pairs * args.rounds} but each evaluation has {pairs_available}")

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=REPO,
        env={**os.environ, "FTSTUDIO_LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/login/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit("runserver did not answer within 60 s")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(60_000)
            page.goto("/login/")
            page.get_by_label("Username").fill("rui")
            page.get_by_label("Password").fill(seeded.logins["rui"])
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url("**/projects/")
            rng = random.Random(0)
            rounds: list[str] = []
            inputs: dict[str, tuple[int, int]] = {}

            def judge(mode: str, round_no: int) -> float:
                evaluation = evaluations[mode]
                page.goto(f"/p/{project.slug}/evals/review/")
                with page.expect_navigation():
                    page.locator(f'form[action$="/review/{evaluation.pk}/next/"] button').click()
                before = set(Judgment.objects.filter(evaluation=evaluation).values_list("pk", flat=True))
                for _ in range(args.pairs):
                    page.get_by_role("heading", name="Which answer is better?").wait_for()
                    groups = page.eval_on_selector_all(
                        "#judgment input[type=radio]", "els => [...new Set(els.map(e => e.name))]"
                    )
                    required = page.eval_on_selector_all(
                        "#judgment [required]", "els => [...new Set(els.map(e => e.name))]"
                    )
                    inputs[mode] = (len(required), len(groups))
                    for name in groups:
                        if name.startswith("score_"):
                            options = page.locator(f'input[name="{name}"]')
                            options.nth(rng.randrange(options.count())).check()
                    page.locator("body").press(rng.choice("abt"))
                    with page.expect_navigation():
                        page.keyboard.press("Control+Enter")
                seconds = list(
                    Judgment.objects.filter(evaluation=evaluation)
                    .exclude(pk__in=before)
                    .values_list("seconds", flat=True)
                )
                assert len(seconds) == args.pairs, f"{mode}: {len(seconds)} judgments saved, not {args.pairs}"
                median = statistics.median(seconds)
                print(f"  round {round_no} {mode}: {args.pairs} judgments, median {median:.2f} s", flush=True)
                return median

            print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
            alternate(
                args.rounds,
                lambda n: judge("scores", n),
                lambda n: judge("winner", n),
                ratio=lambda scores, winner: winner / scores,
                describe=lambda scores, winner: f"scores {scores:.2f} s, winner only {winner:.2f} s per judgment",
                out=rounds.append,
            )  # printed last, after the per-mode lines
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)

    from apps.evaluations.selectors import review_totals

    print(f"load after: {os.getloadavg()[0]:.2f}")
    for mode, evaluation in evaluations.items():
        required, offered = inputs[mode]
        totals = review_totals(evaluation)
        print(
            f"{mode}: a pair requires {required} input (the winner) and offers {offered} "
            f"({offered - 1} optional scores); the scripted reviewer filled {offered if mode == 'scores' else 1}; "
            f"recorded median {totals['median_seconds']:.2f} s per judgment over {totals['timed']} judgments"
        )
    for line in rounds:
        print(line)  # each round, then ratio=X last


if __name__ == "__main__":
    main()
