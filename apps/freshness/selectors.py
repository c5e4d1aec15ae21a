"""Is a model still evaluated on current data? Reads only: nothing is stored, everything is computed here.

* **Stale**: a run trained on an older dataset version than the project's newest, and not yet evaluated on the
  newest one with the newest version of a rubric; an evaluation made on an older dataset version or an older
  rubric version. Both are listed as "not evaluated on current data" with the reason.
* **Comparison of two evaluations**, example by example: items are matched by their source example (or, for
  items without one, by content hash), so the same question is compared across dataset versions; one candidate
  (matched by run, or as the base / prompt baseline) is followed. An example improved or regressed by the rubric's
  automatic checks where both evaluations ran them, else by similarity to the ideal (a change under
  ``SIMILARITY_STEP`` stayed). The change in the candidate's win rate (reviewers' verdicts, item by item, ties as
  half) comes with a paired bootstrap 95% interval over the examples judged in both (``scipy.stats.bootstrap``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from django.db.models import Q

from apps.datasets.models import DatasetVersion
from apps.datasets.selectors import frozen_versions
from apps.evaluations.models import (
    Candidate,
    CandidateKind,
    CheckResult,
    Evaluation,
    EvaluationPurpose,
    EvaluationStatus,
    Generation,
    Judgment,
    Rubric,
)
from apps.evaluations.selectors import eval_items, first_score
from apps.evaluations.statistics import item_side
from apps.runs.models import Run, RunStatus

SIMILARITY_STEP = 0.05  # a change in similarity to the ideal smaller than this counts as "stayed"


class CompareError(ValueError):
    """Two evaluations that cannot be compared; the message says why."""


# --- staleness ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurrentData:
    dataset_version: DatasetVersion | None  # the newest frozen version
    rubric_versions: dict[str, int]  # rubric name -> newest version number

    def rubric_is_current(self, rubric: Rubric) -> bool:
        return rubric.version >= self.rubric_versions.get(rubric.name, rubric.version)


def _newest_version(project) -> DatasetVersion | None:
    """The newest version a person froze: an experiment's subsets (``derived_from``) are parts of an older
    version, never the project's current data."""
    return frozen_versions(project).first()


def source_number(version: DatasetVersion) -> int:
    """The number of the version a person froze that this one holds data of (an experiment's subset: its source)."""
    return version.derived_from.number if version.derived_from_id else version.number


def version_words(version: DatasetVersion) -> str:
    """ "v3", or "v5 (part of v1)" for an experiment's subset."""
    if version.derived_from_id:
        return f"v{version.number} (part of v{version.derived_from.number})"
    return f"v{version.number}"


def current_data(project) -> CurrentData:
    newest: dict[str, int] = {}
    for name, version in Rubric.objects.filter(project=project).values_list("name", "version"):
        newest[name] = max(version, newest.get(name, 0))
    return CurrentData(_newest_version(project), newest)


def evaluation_staleness(evaluation: Evaluation, current: CurrentData) -> str:
    """Why an evaluation is not on current data ("" when it is)."""
    reasons = []
    newest = current.dataset_version
    if newest is not None and source_number(evaluation.dataset_version) < newest.number:
        reasons.append(f"made on {version_words(evaluation.dataset_version)}; v{newest.number} is newer")
    if not current.rubric_is_current(evaluation.rubric):
        reasons.append(
            f"rubric {evaluation.rubric.name} v{evaluation.rubric.version}; "
            f"v{current.rubric_versions[evaluation.rubric.name]} is newer"
        )
    return "; ".join(reasons)


def stale_evaluations(project, evaluations=None) -> dict[int, str]:
    """{evaluation pk: reason} for the evaluations (default: all of the project's) not on current data."""
    current = current_data(project)
    if evaluations is None:
        evaluations = Evaluation.objects.filter(project=project).select_related("dataset_version", "rubric")
    return {e.pk: reason for e in evaluations if (reason := evaluation_staleness(e, current))}


def runs_evaluated_on(project, current: CurrentData) -> set[int]:
    """Runs that are a candidate of a (not failed) evaluation on the newest version with a current rubric."""
    if current.dataset_version is None:
        return set()
    rows = (
        Candidate.objects.filter(
            evaluation__project=project, evaluation__dataset_version=current.dataset_version, kind=CandidateKind.RUN
        )
        .exclude(evaluation__status=EvaluationStatus.FAILED)
        .exclude(evaluation__purpose=EvaluationPurpose.COLLECT)  # on training examples: judges nothing
        .values_list("run_id", "evaluation__rubric__name", "evaluation__rubric__version")
    )
    return {run_id for run_id, name, version in rows if version >= current.rubric_versions.get(name, version)}


def stale_runs(project, runs=None) -> dict[int, str]:
    """{run pk: reason} for succeeded runs trained on an older version and not evaluated on the newest one."""
    current = current_data(project)
    newest = current.dataset_version
    if newest is None:
        return {}
    if runs is None:
        runs = Run.objects.filter(project=project).select_related("dataset_version")
    evaluated = runs_evaluated_on(project, current)
    return {
        r.pk: f"trained on {version_words(r.dataset_version)}; not evaluated on v{newest.number}"
        for r in runs
        if r.status == RunStatus.SUCCEEDED
        and source_number(r.dataset_version) < newest.number
        and r.pk not in evaluated
    }


# --- comparing two evaluations ------------------------------------------------------------------------
def item_key(item) -> tuple:
    return ("example", item.example_id) if item.example_id else ("content", item.content_hash)


def candidate_keys(evaluation: Evaluation) -> dict[str, Candidate]:
    """{"base" | "prompt" | "prompt 2" | "run:ID": candidate}: the same candidate across evaluations."""
    keys: dict[str, Candidate] = {}
    prompts = 0
    for c in evaluation.candidates.select_related("run").order_by("position"):
        if c.kind == CandidateKind.RUN:
            keys[f"run:{c.run_id}"] = c
        elif c.kind == CandidateKind.PROMPT:
            prompts += 1
            keys["prompt" if prompts == 1 else f"prompt {prompts}"] = c
        else:
            keys["base"] = c
    return keys


@dataclass
class ExampleChange:
    position: int  # in the newer evaluation
    input_text: str
    ideal: str
    output_a: str
    output_b: str
    score_a: float
    score_b: float
    win_a: float | None
    win_b: float | None

    @property
    def delta(self) -> float:
        return self.score_b - self.score_a

    outcome: str = ""


@dataclass
class WinChange:
    a: float  # win rate in the first evaluation, over the examples judged in both
    b: float
    low: float | None  # paired bootstrap 95% interval of b - a (None with fewer than two examples)
    high: float | None
    n: int

    @property
    def change(self) -> float:
        return self.b - self.a


@dataclass
class EvaluationDiff:
    a: Evaluation
    b: Evaluation
    candidate_key: str
    candidate_label: str
    choices: list[tuple[str, str]]
    measure: str
    rows: list[ExampleChange]
    counts: dict[str, int] = field(default_factory=dict)
    win: WinChange | None = None
    only_a: int = 0
    only_b: int = 0


def _item_scores(evaluation: Evaluation, candidate: Candidate) -> dict[int, tuple[str, float, float | None]]:
    """{item pk: (output, similarity, share of automatic checks passed or None)}."""
    outputs = {g.item_id: g for g in Generation.objects.filter(candidate=candidate)}
    checks: dict[int, list[bool]] = defaultdict(list)
    for item_id, passed in CheckResult.objects.filter(generation__candidate=candidate).values_list(
        "generation__item_id", "passed"
    ):
        checks[item_id].append(passed)
    return {
        item_id: (g.output, g.similarity, (sum(checks[item_id]) / len(checks[item_id])) if checks[item_id] else None)
        for item_id, g in outputs.items()
    }


def _item_wins(evaluation: Evaluation, candidate: Candidate) -> dict[int, float]:
    """{item pk: 1 won, 0 lost, 0.5 tied}: where the item's judgments involving the candidate point."""
    scores: dict[int, list[float]] = defaultdict(list)
    rows = (
        Judgment.objects.filter(evaluation=evaluation)
        .filter(Q(comparison__candidate_1=candidate) | Q(comparison__candidate_2=candidate))
        .values_list("comparison__item_id", "comparison__candidate_1_id", "winner_id")
    )
    for item_id, c1, winner in rows:
        score = first_score(winner, c1)
        scores[item_id].append(score if c1 == candidate.pk else 1 - score)
    return {item_id: {"a": 1.0, "b": 0.0, "tie": 0.5}[item_side(s)] for item_id, s in scores.items()}


def win_change(pairs: list[tuple[float, float]], *, seed: int = 0) -> WinChange | None:
    """Win rate before and after over the same examples, with a paired bootstrap interval of the change."""
    if not pairs:
        return None
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    low = high = None
    if len(pairs) >= 2:
        from scipy.stats import bootstrap

        diffs = b - a
        if np.ptp(diffs) == 0:  # every example changed alike: no spread to resample
            low = high = float(diffs[0])
        else:
            ci = bootstrap(
                (diffs,),
                np.mean,
                confidence_level=0.95,
                n_resamples=2000,
                method="percentile",
                random_state=np.random.default_rng(seed),
            ).confidence_interval
            low, high = float(ci.low), float(ci.high)
    return WinChange(float(a.mean()), float(b.mean()), low, high, len(pairs))


def classify(change: ExampleChange, measure: str) -> str:
    step = 1e-9 if measure == "checks" else SIMILARITY_STEP
    if change.delta > step:
        return "improved"
    if change.delta < -step:
        return "regressed"
    return "stayed"


SORTS = {
    "regression": lambda r: (r.delta, r.position),
    "improvement": lambda r: (-r.delta, r.position),
    "position": lambda r: r.position,
}


def compare_evaluations(
    a: Evaluation, b: Evaluation, *, candidate: str = "", sort: str = "regression"
) -> EvaluationDiff:
    """Example by example, how one candidate did in ``b`` against ``a`` (see the module docstring)."""
    if a.project_id != b.project_id:
        raise CompareError("Both evaluations must belong to this project.")
    if a.pk == b.pk:
        raise CompareError("Pick two different evaluations to compare.")
    keys_a, keys_b = candidate_keys(a), candidate_keys(b)
    common = [k for k in keys_b if k in keys_a]
    if not common:
        raise CompareError(f"{a} and {b} have no candidate in common (a run, the base model or the prompt baseline).")
    key = candidate if candidate in common else next((k for k in common if k.startswith("run:")), common[0])
    items_a = {item_key(i): i for i in eval_items(a)}
    items_b = {item_key(i): i for i in eval_items(b)}
    matched = [k for k in items_b if k in items_a]
    if not matched:
        raise CompareError(
            f"{a} (v{a.dataset_version.number}) and {b} (v{b.dataset_version.number}) have no examples "
            "in common: nothing to compare example by example."
        )
    scores_a, scores_b = _item_scores(a, keys_a[key]), _item_scores(b, keys_b[key])
    wins_a, wins_b = _item_wins(a, keys_a[key]), _item_wins(b, keys_b[key])
    pairs = [(items_a[k].pk, items_b[k].pk) for k in matched if items_a[k].pk in scores_a and items_b[k].pk in scores_b]
    if not pairs:
        raise CompareError(f"{keys_b[key]} has no outputs on the examples the two evaluations share yet.")
    measure = (
        "checks"
        if all(scores_a[pa][2] is not None and scores_b[pb][2] is not None for pa, pb in pairs)
        else "similarity"
    )
    pick = 2 if measure == "checks" else 1
    by_pk_b = {i.pk: i for i in items_b.values()}
    changes = []
    for pa, pb in pairs:
        item = by_pk_b[pb]
        change = ExampleChange(
            position=item.position,
            input_text="\n".join(m.get("content", "") for m in item.input_messages if m.get("role") == "user"),
            ideal=item.ideal_output,
            output_a=scores_a[pa][0],
            output_b=scores_b[pb][0],
            score_a=scores_a[pa][pick],
            score_b=scores_b[pb][pick],
            win_a=wins_a.get(pa),
            win_b=wins_b.get(pb),
        )
        change.outcome = classify(change, measure)
        changes.append(change)
    changes.sort(key=SORTS.get(sort, SORTS["regression"]))
    counts = {k: sum(1 for c in changes if c.outcome == k) for k in ("improved", "regressed", "stayed")}
    judged = [(c.win_a, c.win_b) for c in changes if c.win_a is not None and c.win_b is not None]
    choices = [(k, str(keys_b[k])) for k in common]
    return EvaluationDiff(
        a,
        b,
        key,
        str(keys_b[key]),
        choices,
        measure,
        changes,
        counts,
        win_change(judged),
        only_a=len(items_a) - len(matched),
        only_b=len(items_b) - len(matched),
    )
