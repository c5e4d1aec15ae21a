"""Writes of data experiments: launch (subset versions, runs), advance (an evaluation per succeeded run, the
experiment's end) and cancel. Plain functions with keyword arguments; the tasks and the pages call them."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from apps.datasets.models import DatasetVersion, Split
from apps.datasets.services import FreezeError
from apps.datasets.versions import freeze_subset
from apps.evaluations.models import Rubric
from apps.evaluations.selectors import newest_rubric
from apps.evaluations.services import CandidateSpec, EvaluationError, create_evaluation
from apps.runs.launching import LaunchError, cancel_run, launch_run
from apps.runs.models import BaseModel

from . import statistics
from .models import Arm, Experiment, ExperimentStatus, Point
from .tasks import advance_experiment_task

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
EVAL_MAX_NEW_TOKENS = 96
MAX_STEPS = 100_000


class ExperimentError(ValueError):
    """Bad input for an experiment: the message says what to change; nothing was launched."""


def parse_fractions(text: str | list | tuple) -> list[float]:
    """ "0.125,0.25,0.5,1" (or "12.5%,25%,...") -> ascending distinct fractions in (0, 1]; ExperimentError if not."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(p) for p in text]
    values = []
    for part in [p for p in parts if p]:
        try:
            value = float(part[:-1]) / 100 if part.endswith("%") else float(part)
        except ValueError:
            raise ExperimentError(f"Fraction {part!r} is not a number: write them like 0.125,0.25,0.5,1.") from None
        if not 0 < value <= 1:
            raise ExperimentError(f"Fraction {part} is outside (0, 1]: each is a share of the train split.")
        values.append(value)
    values = sorted(set(values))
    if len(values) < 2:
        raise ExperimentError("Give at least two fractions (e.g. 0.125,0.25,0.5,1): a trend needs two sizes.")
    return values


def _version(project, version) -> DatasetVersion:
    if isinstance(version, DatasetVersion):
        found = version if version.project_id == project.pk else None
    else:
        found = DatasetVersion.objects.filter(project=project, number=version).first()
    if found is None:
        raise ExperimentError(f"Project {project.slug} has no dataset version {version}.")
    return found


@transaction.atomic
def launch_experiment(
    *,
    project,
    versions: list,
    fractions=DEFAULT_FRACTIONS,
    preset: str = "quick",
    base_model: BaseModel | str | None = None,
    rubric: Rubric | None = None,
    seed: int = 0,
    labels: list[str] | None = None,
    name: str = "",
    steps: int | None = None,
    user=None,
) -> Experiment:
    """Freeze each arm's nested train subsets as versions derived from it, all with the first version's test
    split, and launch one run per subset (same preset and seed). One version: a data-scaling curve; two: the
    same curve for each (e.g. raw, then curated) on one chart. ``steps``: every run trains exactly that many steps
    (smaller subsets get more epochs), so the curve measures data, not training length; None: the preset's epochs.
    Raises ExperimentError; nothing is saved then."""
    if not 1 <= len(versions) <= 2:
        raise ExperimentError("An experiment has one dataset version (a scaling curve) or two (curated against raw).")
    sources = [_version(project, v) for v in versions]
    if len({v.pk for v in sources}) < len(sources):
        raise ExperimentError("Compare two different versions (the same one twice would show nothing).")
    fractions = parse_fractions(fractions)
    if steps is not None and not 1 <= int(steps) <= MAX_STEPS:
        raise ExperimentError(f"Training steps must be between 1 and {MAX_STEPS}, got {steps}.")
    test_items = list(sources[0].items.filter(split=Split.TEST).order_by("position"))
    if not test_items:
        raise ExperimentError(
            f"Dataset version v{sources[0].number} has no test split: every point is scored on "
            "held-out test examples. Assign a test split and freeze a new version."
        )
    if rubric is None:
        rubric = newest_rubric(project)
    if rubric is None or rubric.project_id != project.pk:
        raise ExperimentError("Write a rubric first (Rubrics tab): its automatic checks score every point.")
    if base_model is None or isinstance(base_model, str):
        found = (
            BaseModel.objects.filter(name=base_model).first()
            if base_model
            else BaseModel.objects.order_by("name").first()
        )
        if found is None:
            raise ExperimentError(
                f"Unknown base model {base_model!r}: register one first."
                if base_model
                else "No base model is registered yet."
            )
        base_model = found
    labels = list(labels or [])
    labels += [f"v{v.number}" for v in sources[len(labels) :]]
    minimum = settings.FTSTUDIO_EXPERIMENT_MIN_TRAIN
    test_hashes = {i.content_hash for i in test_items}
    plans = []
    for source, label in zip(sources, labels, strict=True):
        train = list(
            source.items.filter(split=Split.TRAIN).order_by("position").values_list("position", "content_hash")
        )
        kept = [
            (pos, h) for pos, h in train if h not in test_hashes
        ]  # an example in the shared test split never trains
        subsets = statistics.nested_subsets(kept, fractions, seed)
        for fraction, chosen in subsets.items():
            if len(chosen) < minimum:
                raise ExperimentError(
                    f"{fraction * 100:g} % of {label}'s {len(kept)} training examples is {len(chosen)}: a point "
                    f"needs at least {minimum}. Drop that fraction or add examples."
                )
        plans.append((source, label, kept, len(train) - len(kept), subsets))
    experiment = Experiment.objects.create(
        project=project,
        name=name.strip() or " vs ".join(labels) + f" · {', '.join(f'{f * 100:g} %' for f in fractions)}",
        fractions=fractions,
        preset=preset,
        steps=int(steps) if steps is not None else None,
        seed=seed,
        base_model=base_model,
        rubric=rubric,
        test_version=sources[0],
        created_by=user if getattr(user, "pk", None) else None,
    )
    for position, (source, label, kept, dropped, subsets) in enumerate(plans):
        arm = Arm.objects.create(
            experiment=experiment,
            position=position,
            label=label[:80],
            source_version=source,
            train_total=len(kept),
            dropped=dropped,
        )
        for fraction, chosen in subsets.items():
            whole = fraction == 1.0 and not dropped and position == 0  # the source itself: nothing to freeze
            if whole:
                version = source
            else:
                try:
                    version = freeze_subset(
                        source=source,
                        train_positions=chosen,
                        test_items=test_items,
                        user=user,
                        note=f"v{source.number} · {fraction * 100:g} % ({len(chosen)} examples)",
                    )
                except FreezeError as exc:
                    raise ExperimentError(str(exc)) from exc
            try:
                run = launch_run(
                    project=project,
                    dataset_version=version,
                    base_model=base_model,
                    preset=preset,
                    overrides={"seed": seed, **({"max_steps": int(steps)} if steps is not None else {})},
                    user=user,
                    name=f"{label} · {fraction * 100:g} % ({len(chosen)} examples)"[:120],
                )
            except LaunchError as exc:
                raise ExperimentError("; ".join(exc.errors.values())) from exc
            Point.objects.create(arm=arm, fraction=fraction, n_train=len(chosen), version=version, run=run)
    return experiment


def advance_experiment(experiment_pk: int) -> str:
    """Move an experiment on from its runs' outcomes: an evaluation for each succeeded run that has none, and the
    experiment finished once every point is. Safe to run any number of times (the row is locked; a point's
    evaluation is created once). Returns the experiment's status, or "missing"."""
    with transaction.atomic():
        experiment = Experiment.objects.select_for_update().filter(pk=experiment_pk).first()
        if experiment is None:
            return "missing"
        if experiment.is_finished:
            return experiment.status
        points = list(
            Point.objects.filter(arm__experiment=experiment).select_related("run", "evaluation", "arm", "version")
        )
        for point in points:
            if point.evaluation_id is None and point.run.status == "succeeded":
                try:
                    point.evaluation = create_evaluation(
                        project=experiment.project,
                        dataset_version=point.version,
                        rubric=experiment.rubric,
                        candidates=[CandidateSpec("run", run_id=point.run_id)],
                        base_model=experiment.base_model,
                        name=f"{experiment.name[:60]} · {point}"[:120],
                        max_new_tokens=EVAL_MAX_NEW_TOKENS,
                        seed=experiment.seed,
                        automatic_only=True,
                    )
                except EvaluationError:
                    log.exception("Experiment %s: could not evaluate run %s", experiment.pk, point.run_id)
                    continue
                point.save(update_fields=["evaluation"])
        if all(p.is_finished for p in points):
            experiment.mark_finished()
        return experiment.status


def advance_open_experiments() -> list[int]:
    """The periodic pass: advance every running experiment (a lost message or a restarted worker is caught up)."""
    pks = list(Experiment.objects.filter(status=ExperimentStatus.RUNNING).values_list("pk", flat=True))
    for pk in pks:
        advance_experiment(pk)
    return pks


def schedule_advance_for(*, run_pk: int | None = None, evaluation_pk: int | None = None) -> None:
    """Queue an advance of the running experiments that hold this run or evaluation (after the commit)."""
    points = Point.objects.filter(arm__experiment__status=ExperimentStatus.RUNNING)
    points = points.filter(run_id=run_pk) if run_pk is not None else points.filter(evaluation_id=evaluation_pk)
    for pk in set(points.values_list("arm__experiment_id", flat=True)):
        transaction.on_commit(lambda pk=pk: advance_experiment_task.delay(pk))


def cancel_experiment(*, experiment: Experiment) -> Experiment:
    """Cancel every run of the experiment that has not finished, and the experiment: nothing more is launched."""
    with transaction.atomic():
        experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
        if experiment.is_finished:
            return experiment
        for point in Point.objects.filter(arm__experiment=experiment).select_related("run"):
            if not point.run.is_finished:
                cancel_run(run=point.run)
        experiment.mark_cancelled()
    return experiment
