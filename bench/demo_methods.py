"""Does learning from judgments pay on the demo? The quick supervised run against a preference (DPO) run and a
reinforcement (GRPO) run started from it, all through the product's own services and tasks on this machine.

1. Seeds the demo and trains the quick supervised run on the curated version (v2), as bench/demo_loop.py does.
2. Collects preferences on v2's train split: an evaluation that collects preferences, with the supervised run
   against the strong prompt (the house-style system prompt with two few-shot examples of the train split).
   Both write the house format, so the verdicts turn on the facts: the prompt copies numbers from its examples and
   gets the facts wrong on most replies, the run on few. A second supervised run with another seed would agree
   with the first on ~9 items in 10 and give a few dozen pairs for the price of another training run. The demo's
   two reviewers judge every blind pair by a script (the side passing more of
   ``apps.demo.generator.check_reply``'s house-style checks wins, equal is a tie; the same rule as
   scripts/readme_screenshots.py), through the review service, so the verdicts are real judgments. They are
   harvested into preference pairs (both reviewers must agree) and frozen as a preference version anchored to v2.
3. Trains a DPO run from the supervised run (its adapter is the start and the reference) on those pairs, and a
   reinforcement run from the supervised run rewarded by the rubric's automatic checks as graders (greeting,
   sign-off, similarity to the ideal reply, sentence and word limits), with the quick preset and ``--dpo-steps`` /
   ``--grpo-steps`` steps.
4. Evaluates the supervised, DPO and GRPO runs on v2's 31 test examples and scores every output with
   ``check_reply``. For DPO vs supervised and GRPO vs supervised prints the paired change in the share of replies
   that pass every check, with its 95 % t interval over the paired items
   (``apps.experiments.statistics.paired_difference``, the one the experiments page uses) and the discordant
   counts (items only one of the two passes).

Tasks run inline (``CELERY_TASK_ALWAYS_EAGER``) in a temporary var dir; the model cache is shared.

    .venv/bin/python bench/demo_methods.py [--size 300] [--dpo-steps 0] [--dpo-learning-rate 0] [--grpo-steps 16]
        [--threads 1] [--max-new-tokens 64] [--keep DIR]

``--dpo-steps 0``: one epoch of the pairs (the preset's own length); ``--dpo-learning-rate 0``: a preference run's
own default (5e-5; the supervised presets' 1e-3 wrecks the demo's model, see docs/BENCHMARKS.md). Prints each
step's time, the per-candidate check table, ``grpo_change=X`` and last ``dpo_change=X``: the DPO run's share of
test replies passing every check minus the supervised run's (a fraction; -0.032 is one reply of 31 fewer), with its
95 % interval in brackets.
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

CRITERION_CHECKS = {  # demo rubric criterion -> (check attribute, score if passed, score if not)
    "Greets by name": ("greets_by_name", 1, 0),
    "House sign-off": ("signs_off", 1, 0),
    "Answers from the facts": ("uses_facts", 5, 2),
    "One sentence, no padding": ("one_sentence", 5, 1),
}


def judge_all(evaluation) -> tuple[int, dict]:
    """Every reviewer of the project judges every pair handed to them by the house-style checks."""
    from apps.accounts.models import Membership
    from apps.demo.generator import check_reply
    from apps.evaluations import selectors, services

    criteria = [c for c in evaluation.rubric.criteria.all() if c.name in CRITERION_CHECKS]
    judged, verdicts = 0, {"decisive": 0, "tie": 0}
    for membership in Membership.objects.filter(project=evaluation.project, role="reviewer").select_related("user"):
        while (assignment := services.next_assignment(evaluation=evaluation, reviewer=membership.user)) is not None:
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
            services.submit_judgment(
                assignment=assignment,
                reviewer=membership.user,
                winner=winner,
                scores=scores,
                comment="scored by the house-style checks (bench/demo_methods.py)",
            )
            judged += 1
            verdicts["tie" if winner == "tie" else "decisive"] += 1
    return judged, verdicts


def timed_run(label: str, **kwargs):
    from apps.runs.services import launch_run

    started, cpu = time.perf_counter(), time.process_time()
    run = launch_run(**kwargs)
    run.refresh_from_db()
    seconds = time.perf_counter() - started
    print(
        f"{label} run #{run.pk}: {run.status} in {seconds:.0f} s wall ({time.process_time() - cpu:.0f} s CPU), "
        f"{run.step} steps, train loss {run.final_train_loss}, val loss {run.final_val_loss}, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    if run.status != "succeeded":
        print(run.error, run.log_tail[-3000:])
        raise SystemExit(1)
    return run, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--dpo-steps", type=int, default=0, help="0: one epoch of the pairs")
    parser.add_argument("--dpo-learning-rate", type=float, default=0.0, help="0: a preference run's own default (5e-5)")
    parser.add_argument("--grpo-steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--keep", default="", help="var dir to use and keep (default: a temporary one)")
    args = parser.parse_args()

    setup_django(args.keep, "ftstudio-demo-methods-")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from apps.runs.services import ensure_shipped_base_model

    from apps.datasets.preferences import freeze_preference_version
    from apps.demo import generator, services
    from apps.evaluations.graders import rubric_graders
    from apps.evaluations.models import Generation, Rubric
    from apps.evaluations.preferences import harvest_preferences
    from apps.evaluations.services import CandidateSpec, create_evaluation
    from apps.experiments.statistics import paired_difference

    whole = time.perf_counter()
    started = time.perf_counter()
    seeded = services.seed_demo(size=args.size)
    project = seeded.project
    print(f"seed: {time.perf_counter() - started:.1f} s ({'created' if seeded.created else 'existing'})", flush=True)
    version = project.dataset_versions.filter(derived_from__isnull=True).order_by("-number").first()  # v2, curated
    base_model = ensure_shipped_base_model()
    rubric = Rubric.objects.filter(project=project).order_by("-version").first()
    designer = project.memberships.get(user__username="dana").user
    common = {"project": project, "dataset_version": version, "base_model": base_model, "preset": "quick"}

    supervised, supervised_s = timed_run("supervised (quick)", **common)

    started = time.perf_counter()
    collect = create_evaluation(
        project=project,
        dataset_version=version,
        rubric=rubric,
        base_model=base_model,
        candidates=[
            CandidateSpec("run", run_id=supervised.pk),
            CandidateSpec("prompt", system_prompt=generator.HOUSE_STYLE_PROMPT, few_shot=2),
        ],
        max_new_tokens=args.max_new_tokens,
        name="demo preferences: supervised run vs strong prompt (train split)",
        purpose="collect",
    )
    collect.refresh_from_db()
    collect_gen_s = time.perf_counter() - started
    print(f"collect evaluation #{collect.pk}: {collect.status}, {collect.done} outputs in {collect_gen_s:.0f} s")
    started = time.perf_counter()
    judged, verdicts = judge_all(collect)
    harvest = harvest_preferences(evaluation=collect, user=designer)
    preferences = freeze_preference_version(
        project=project, dataset_version=version, user=designer, note="Scripted verdicts on v2's train split"
    )
    judge_s = time.perf_counter() - started
    print(
        f"judged {judged} blind pairs ({verdicts['decisive']} decisive, {verdicts['tie']} ties) and harvested in "
        f"{judge_s:.0f} s: {harvest}; preference version {preferences} {preferences.split_counts}",
        flush=True,
    )

    dpo_overrides = {"max_steps": args.dpo_steps} if args.dpo_steps else {}
    if args.dpo_learning_rate:
        dpo_overrides["learning_rate"] = args.dpo_learning_rate
    dpo, dpo_s = timed_run(
        "DPO",
        **common,
        overrides=dpo_overrides,
        method="dpo",
        preference_version=preferences,
        start_from=supervised,
    )
    graders = rubric_graders(rubric)
    print("graders: " + ", ".join(f"{g['name']} ({g['type']}, weight {g['weight']})" for g in graders))
    grpo, grpo_s = timed_run(
        "GRPO",
        **common,
        overrides={"max_steps": args.grpo_steps, "max_completion_length": args.max_new_tokens},
        method="reinforcement",
        graders=graders,
        start_from=supervised,
    )

    started = time.perf_counter()
    evaluation = create_evaluation(
        project=project,
        dataset_version=version,
        rubric=rubric,
        base_model=base_model,
        candidates=[CandidateSpec("run", run_id=r.pk) for r in (supervised, dpo, grpo)],
        max_new_tokens=args.max_new_tokens,
        name="demo methods: supervised vs DPO vs GRPO",
    )
    evaluation.refresh_from_db()
    eval_s = time.perf_counter() - started
    print(f"evaluation #{evaluation.pk}: {evaluation.status}, {evaluation.done} outputs in {eval_s:.0f} s\n")

    passes: dict[int, dict[int, float]] = {}
    print(f"{'candidate':<40} greets signs 1-sent facts every-check (of {version.split_counts['test']})")
    for candidate in evaluation.candidates.order_by("position"):
        rows = list(Generation.objects.filter(candidate=candidate).select_related("item").order_by("item__position"))
        checks = {g.item_id: generator.check_reply(g.output, g.item.input_messages[-1]["content"]) for g in rows}
        passes[candidate.run_id] = {item: float(c.all_pass) for item, c in checks.items()}
        counts = [
            sum(getattr(c, attr) for c in checks.values())
            for attr in ("greets_by_name", "signs_off", "one_sentence", "uses_facts", "all_pass")
        ]
        print(f"{candidate.label:<40} " + "  ".join(f"{n:>4}" for n in counts))

    changes = {}
    for label, run in (("GRPO", grpo), ("DPO", dpo)):
        diff = paired_difference(passes[supervised.pk], passes[run.pk])
        only_new = sum(1 for k, v in passes[run.pk].items() if v and not passes[supervised.pk].get(k))
        only_old = sum(1 for k, v in passes[supervised.pk].items() if v and not passes[run.pk].get(k))
        changes[label] = diff
        print(
            f"{label} vs supervised, every check passes: {diff.second:.3f} vs {diff.first:.3f}, change "
            f"{diff.mean:+.3f} (95 % CI {diff.low:+.3f} to {diff.high:+.3f}, {diff.items} paired items; "
            f"{only_new} pass only with {label}, {only_old} only with the supervised run)"
        )
    print(
        f"\ntimes: supervised {supervised_s:.0f} s, collect generation {collect_gen_s:.0f} s, judge+harvest+freeze "
        f"{judge_s:.0f} s, DPO {dpo_s:.0f} s, GRPO {grpo_s:.0f} s, evaluation {eval_s:.0f} s, whole "
        f"{time.perf_counter() - whole:.0f} s; load after: {os.getloadavg()[0]:.2f}"
    )
    for label in ("GRPO", "DPO"):
        d = changes[label]
        print(f"{label.lower()}_change={d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")


if __name__ == "__main__":
    main()
