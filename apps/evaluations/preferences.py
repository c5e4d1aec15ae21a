"""Preference pairs from evaluations: reviewers' blind verdicts and designers' improved replies.

Both write through ``apps.datasets.preferences.add_pairs`` into the project's pool. Neither ever takes a test
example: the test split of a dataset version judges the models trained on pairs anchored to it, so a pair built
on one would teach a model the very answer it is scored on. Verdicts are only harvested from an evaluation that
collects preferences (its items are training examples), and a reply is only improved on a training or validation
example; freezing checks the inputs once more against the anchor's test inputs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from apps.datasets.importers import input_hash
from apps.datasets.importing import import_limits
from apps.datasets.models import DatasetVersion, PreferenceOrigin, PreferencePair, Split
from apps.datasets.preference_files import check_pair
from apps.datasets.preferences import PairSpec, PreferenceError, add_pair, add_pairs

from .models import Comparison, Evaluation, Generation, Judgment
from .selectors import eval_items

SHOWN = 10


@dataclass(frozen=True)
class HarvestResult:
    created: int
    skipped_ties: int  # no decisive verdict (every reviewer said tie), or both outputs the same reply
    skipped_disagreement: int  # decisive verdicts, but not enough of them agree
    skipped_existing: int  # already in the pool (an earlier harvest, import or edit)
    skipped_invalid: int = 0  # an output that is no reply to train on (empty, or over the size limit for a message)


def _named(positions: list[int]) -> str:
    shown = ", ".join(str(p) for p in positions[:SHOWN])
    more = f" and {len(positions) - SHOWN} more" if len(positions) > SHOWN else ""
    return f"example{'s' if len(positions) > 1 else ''} {shown}{more}"


def _test_inputs(version: DatasetVersion) -> set[str]:
    rows = version.items.filter(split=Split.TEST).values_list("messages", flat=True)
    return {input_hash(messages) for messages in rows.iterator(chunk_size=2000)}


def _refuse_held_out(evaluation: Evaluation, items) -> None:
    """Refuse items that are not training examples of the evaluation's version (naming them), and training items
    whose input is also a test input of that version."""
    version = evaluation.dataset_version
    test = sorted({i.position for i in items if i.split == Split.TEST})
    if test:
        raise PreferenceError(
            f"{_named(test).capitalize()} of v{version.number} "
            f"{'are test examples' if len(test) > 1 else 'is a test example'}: test examples judge the models "
            "trained on these pairs, so their verdicts never become training pairs. Collect preferences with an "
            "evaluation that uses the training examples."
        )
    other = sorted({i.position for i in items if i.split != Split.TRAIN})
    if other:
        raise PreferenceError(
            f"{_named(other).capitalize()} of v{version.number} {'are' if len(other) > 1 else 'is'} not training "
            "examples: preferences are only collected on training examples."
        )
    tests = _test_inputs(version)
    twins = sorted({i.position for i in items if input_hash(i.messages) in tests})
    if twins:
        raise PreferenceError(
            f"{_named(twins).capitalize()} of v{version.number} {'have' if len(twins) > 1 else 'has'} the same input "
            "as a test example: a pair on it would teach the models the answer they are scored on."
        )


def _outcome(winners: list[int | None], min_agreement: int | None) -> int | None | str:
    """The preferred candidate's id, "tie" (no decisive verdict) or "disagree".

    ``min_agreement`` None: every decisive verdict names the same candidate. N: at least N verdicts name it and they
    are a majority of the decisive ones."""
    decisive = Counter(w for w in winners if w is not None)
    if not decisive:
        return "tie"
    (top, votes), *rest = decisive.most_common()
    if min_agreement is None:
        return top if not rest else "disagree"
    if votes >= min_agreement and votes * 2 > sum(decisive.values()):
        return top
    return "disagree"


def harvest_preferences(*, evaluation: Evaluation, user=None, min_agreement: int | None = None) -> HarvestResult:
    """Turn the reviewers' decisive blind verdicts of a preference-collecting evaluation into preference pairs:
    for each judged comparison, the output of the candidate the verdicts preferred against the other one, on the
    item's input. Ties are skipped; where several reviewers judged a comparison, it is kept only when they agree
    (``min_agreement``: see ``_outcome``); the counts are kept in each pair's ``origin_detail``.

    Refused (PreferenceError, nothing added) for an evaluation on test examples, naming them. Safe to run again:
    a pair already in the pool is counted in ``skipped_existing``, never added twice."""
    if min_agreement is not None and min_agreement < 1:
        raise PreferenceError("The agreement needed must be at least one verdict.")
    comparisons = list(
        Comparison.objects.filter(evaluation=evaluation, judgments__isnull=False)
        .distinct()
        .select_related("item")
        .order_by("order_key")
    )
    items = [c.item for c in comparisons] if evaluation.collects_preferences else list(eval_items(evaluation))
    _refuse_held_out(evaluation, items)
    winners: dict[int, list[int | None]] = defaultdict(list)
    for comparison_id, winner_id in Judgment.objects.filter(evaluation=evaluation).values_list(
        "comparison_id", "winner_id"
    ):
        winners[comparison_id].append(winner_id)
    outputs = {
        (g.candidate_id, g.item_id): g.output
        for g in Generation.objects.filter(candidate__evaluation=evaluation).only("candidate_id", "item_id", "output")
    }
    ties = disagreements = invalid = 0
    limits = import_limits()
    specs: list[PairSpec] = []
    for c in comparisons:
        votes = winners[c.pk]
        preferred_id = _outcome(votes, min_agreement)
        if preferred_id == "tie":
            ties += 1
            continue
        if preferred_id == "disagree":
            disagreements += 1
            continue
        other_id = c.candidate_2_id if preferred_id == c.candidate_1_id else c.candidate_1_id
        better, worse = outputs.get((preferred_id, c.item_id)), outputs.get((other_id, c.item_id))
        if better is None or worse is None or " ".join(better.split()) == " ".join(worse.split()):
            ties += 1  # the same reply on both sides: no preference to learn
            continue
        decisive = Counter(w for w in votes if w is not None)
        spec = PairSpec(
            messages=c.item.input_messages,
            tools=c.item.tools or [],
            preferred={"role": "assistant", "content": better},
            non_preferred={"role": "assistant", "content": worse},
            origin_detail={
                "evaluation": evaluation.pk,
                "evaluation_name": evaluation.name,
                "comparison": c.pk,
                "dataset_version": evaluation.dataset_version.number,
                "item_position": c.item.position,
                "verdicts": len(votes),
                "preferred_votes": decisive[preferred_id],
                "other_votes": sum(decisive.values()) - decisive[preferred_id],
                "ties": len(votes) - sum(decisive.values()),
                "min_agreement": min_agreement,
            },
        )
        _, problems = check_pair(spec.messages, spec.tools, [spec.preferred], [spec.non_preferred], limits=limits)
        if problems:
            invalid += 1
        else:
            specs.append(spec)
    created, existing = add_pairs(project=evaluation.project, specs=specs, origin=PreferenceOrigin.VERDICT, user=user)
    return HarvestResult(
        created=len(created),
        skipped_ties=ties,
        skipped_disagreement=disagreements,
        skipped_existing=existing,
        skipped_invalid=invalid,
    )


def improve_output(*, generation: Generation, text: str, user=None) -> PreferencePair:
    """A designer's better reply to a model output: the edited text is preferred, the model's own output is not,
    on the item's input. Refused when the text is empty or unchanged, and on test examples (they judge the models
    trained on these pairs). An improvement already in the pool is returned as it is."""
    item = generation.item
    evaluation = generation.candidate.evaluation
    version = evaluation.dataset_version
    if item.split == Split.TEST:
        raise PreferenceError(
            f"Example {item.position} is a test example of v{version.number}: test examples judge the models "
            "trained on preference pairs, so an improved reply to it would teach them the answer they are scored "
            "on. Improve replies to training examples (an evaluation that collects preferences)."
        )
    if not text.strip():
        raise PreferenceError("The improved reply is empty: write the reply the model should have given.")
    if " ".join(text.split()) == " ".join(generation.output.split()):
        raise PreferenceError("The reply is unchanged: edit it into the reply the model should have given.")
    if input_hash(item.messages) in _test_inputs(version):
        raise PreferenceError(
            f"Example {item.position} has the same input as a test example of v{version.number}: an improved reply "
            "to it would teach the models the answer they are scored on."
        )
    spec = PairSpec(
        messages=item.input_messages,
        tools=item.tools or [],
        preferred={"role": "assistant", "content": text.strip()},
        non_preferred={"role": "assistant", "content": generation.output},
        origin_detail={
            "evaluation": evaluation.pk,
            "evaluation_name": evaluation.name,
            "generation": generation.pk,
            "dataset_version": version.number,
            "item_position": item.position,
            "edited_by": getattr(user, "username", ""),
        },
    )
    pair, _ = add_pair(project=evaluation.project, spec=spec, origin=PreferenceOrigin.EDIT, user=user)
    return pair
