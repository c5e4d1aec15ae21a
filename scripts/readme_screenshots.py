"""Screenshots of a real demo evaluation for the README (docs/images/): the run page and the results page.

    .venv/bin/python bench/demo_loop.py --keep /tmp/demo-shot     # seeds, trains the quick run, evaluates
    .venv/bin/python scripts/readme_screenshots.py /tmp/demo-shot

The outputs are the real ones of the kept demo loop. The judgments are NOT human: the demo's two reviewers'
pairs are judged here by a script that applies the house-style checks (apps.demo.generator.check_reply):
each criterion is scored from its check, and the side passing more checks wins (equal: tie). The README's
caption says so. Needs Debian's chromium (`make chromium`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CRITERION_CHECKS = {  # demo rubric criterion -> (check attribute, value if passed, value if not)
    "Greets by name": ("greets_by_name", 1, 0),
    "House sign-off": ("signs_off", 1, 0),
    "Answers from the facts": ("uses_facts", 5, 2),
    "One sentence, no padding": ("one_sentence", 5, 1),
}
PASSWORD = "readme-screenshot"


def judge_all(evaluation) -> int:
    from apps.accounts.models import Membership
    from apps.demo.generator import check_reply
    from apps.evaluations import review, selectors

    criteria = list(evaluation.rubric.criteria.all())
    judged = 0
    for membership in Membership.objects.filter(project=evaluation.project, role="reviewer").select_related("user"):
        while (assignment := review.next_assignment(evaluation=evaluation, reviewer=membership.user)) is not None:
            user_text = assignment.comparison.item.input_messages[-1]["content"]
            checks = {side.letter: check_reply(side.output, user_text) for side in selectors.sides(assignment)}
            scores = {}
            for criterion in criteria:
                attribute, passed, failed = CRITERION_CHECKS[criterion.name]
                for letter, check in checks.items():
                    scores[(letter, criterion.pk)] = passed if getattr(check, attribute) else failed
            passes = {
                letter: sum(getattr(c, a) for a, _, _ in CRITERION_CHECKS.values()) for letter, c in checks.items()
            }
            winner = "tie" if passes["A"] == passes["B"] else max(passes, key=passes.get)
            review.submit_judgment(
                assignment=assignment,
                reviewer=membership.user,
                winner=winner,
                scores=scores,
                comment="scored by the house-style checks (README screenshot script)",
            )
            judged += 1
    return judged


def main() -> None:
    var_dir = sys.argv[1]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "ftstudio.settings",
        "DJANGO_DEBUG": "1",
        "FTSTUDIO_VAR_DIR": var_dir,
        "HF_HUB_OFFLINE": "1",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from apps.evaluations.models import Evaluation
    from apps.runs.models import Run

    evaluation = Evaluation.objects.order_by("-pk").first()
    run = Run.objects.order_by("-pk").first()
    print(f"judged {judge_all(evaluation)} pairs")
    pm = get_user_model().objects.get(memberships__project=evaluation.project, memberships__role="pm")
    pm.set_password(PASSWORD)
    pm.save()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/login/", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
            page = browser.new_page(base_url=base, viewport={"width": 1280, "height": 900})
            page.goto("/login/")
            page.get_by_label("Username").fill(pm.username)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url("**/projects/")
            slug = evaluation.project.slug
            images = REPO / "docs" / "images"
            page.goto(f"/p/{slug}/evals/{evaluation.pk}/results/")
            page.screenshot(path=str(images / "results.png"), full_page=False)
            page.goto(f"/p/{slug}/runs/{run.pk}/")
            page.screenshot(path=str(images / "run.png"), full_page=False)
            browser.close()
        print(f"wrote {images / 'results.png'} and {images / 'run.png'}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
