"""The demo loop on this machine's CPU, through the product's own services and tasks.

Seeds the demo (300 clean examples), trains a run with the "quick" preset on the curated version (v2), then
evaluates base vs prompt-only (the house-style instructions as system prompt) vs the tuned run on the
test split, and scores every output automatically against the house style
(``apps.demo.generator.check_reply``: greeting by name, sign-off, one sentence, the facts' numbers).
Tasks run inline (``CELERY_TASK_ALWAYS_EAGER``) in a temporary var dir; the model cache is shared.

    .venv/bin/python bench/demo_loop.py [--size 300] [--preset quick] [--max-new-tokens 64] [--keep DIR]

Prints the run time, the generation time, the per-candidate style pass rates, and last
``tuned_style_pass=X`` (share of the tuned run's test replies that pass every house-style check).
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
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--keep", default="", help="var dir to use and keep (default: a temporary one)")
    args = parser.parse_args()

    setup_django(args.keep, "ftstudio-demo-bench-")
    from apps.demo import generator, services
    from apps.evaluations.models import Generation, Rubric
    from apps.evaluations.services import CandidateSpec, create_evaluation
    from apps.runs.base_models import ensure_shipped_base_model
    from apps.runs.launching import launch_run

    started = time.perf_counter()
    seeded = services.seed_demo(size=args.size)
    project = seeded.project
    print(f"seed: {time.perf_counter() - started:.1f} s ({'created' if seeded.created else 'existing'})")
    version = project.dataset_versions.filter(derived_from__isnull=True).order_by("-number").first()  # v2, curated
    base_model = ensure_shipped_base_model()

    started = time.perf_counter()
    run = launch_run(project=project, dataset_version=version, base_model=base_model, preset=args.preset)
    run.refresh_from_db()
    run_seconds = time.perf_counter() - started
    print(
        f"run #{run.pk} ({args.preset}): {run.status} in {run_seconds:.0f} s, {run.step} steps, "
        f"train loss {run.final_train_loss}, val loss {run.final_val_loss}, {run.tokens_per_second or 0:.0f} tokens/s"
    )
    if run.status != "succeeded":
        print(run.error, run.log_tail[-2000:])
        raise SystemExit(1)

    rubric = Rubric.objects.filter(project=project).order_by("-version").first()
    started = time.perf_counter()
    evaluation = create_evaluation(
        project=project,
        dataset_version=version,
        rubric=rubric,
        base_model=base_model,
        candidates=[
            CandidateSpec("base"),
            CandidateSpec("prompt", system_prompt=generator.HOUSE_STYLE_PROMPT),
            CandidateSpec("run", run_id=run.pk),
        ],
        max_new_tokens=args.max_new_tokens,
        name="demo benchmark",
    )
    evaluation.refresh_from_db()
    eval_seconds = time.perf_counter() - started
    print(
        f"evaluation #{evaluation.pk}: {evaluation.status}, {evaluation.done} outputs "
        f"({version.split_counts['test']} test examples x 3 candidates) in {eval_seconds:.0f} s"
    )

    tuned_pass = 0.0
    print(f"{'candidate':<40} greets  signs  1-sent  facts  all    F1    tokens")
    for candidate in evaluation.candidates.order_by("position"):
        rows = list(Generation.objects.filter(candidate=candidate).select_related("item").order_by("item__position"))
        checks = [generator.check_reply(g.output, g.item.input_messages[-1]["content"]) for g in rows]
        n = len(checks) or 1

        def share(attr: str, checks=checks, n=n) -> float:
            return sum(getattr(c, attr) for c in checks) / n

        similarity = sum(g.similarity for g in rows) / n
        tokens = sum(g.output_tokens for g in rows) / n
        print(
            f"{candidate.label:<40} {share('greets_by_name'):.2f}   {share('signs_off'):.2f}   "
            f"{share('one_sentence'):.2f}    {share('uses_facts'):.2f}   {share('all_pass'):.2f}   "
            f"{similarity:.2f}  {tokens:.0f}"
        )
        if candidate.kind == "run":
            tuned_pass = share("all_pass")
            example = rows[0]
        elif candidate.kind == "base":
            base_example = rows[0]
    print("\nbase model on the first test input:\n" + base_example.output[:300])
    print("\ntuned run on the same input:\n" + example.output[:300])
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print(f"tuned_style_pass={tuned_pass:.2f}")


if __name__ == "__main__":
    main()
