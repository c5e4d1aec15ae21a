"""The three ways a run learns (OpenAI's fine-tuning methods): what each needs at launch and what it trains on.

- **supervised** ("Learn from examples"): the dataset version's ideal outputs (worker/train.py).
- **dpo** ("Learn from preferences"): a frozen preference version of the project; the run's dataset version is
  the one that preference version is anchored to (its test split judges the run). ``beta`` says how far the model
  may move from the reference, which is the starting point (the base model, or the run it starts from).
- **reinforcement** ("Learn from graders"): the train split's inputs are the prompts, each example's ideal output
  its reference answer; graders (OpenAI's shapes, each with a weight) score the sampled replies.

`launching.prepare_launch` and `execution._train` call in here; the worker side is worker/train_methods.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from apps.datasets.importers import input_hash
from apps.datasets.models import DatasetVersion, PreferenceVersion
from worker.train_config import steps_per_epoch

from . import artifacts
from .models import Run, RunStatus, TrainingMethod

METHODS = tuple(TrainingMethod.values)
METHOD_FIELDS = ("beta", "num_generations", "max_completion_length")
# Per preset, what the preference and reinforcement runs add to its hyperparameters.
METHOD_PRESETS = {
    "quick": {"beta": 0.1, "num_generations": 4, "max_completion_length": 128},
    "balanced": {"beta": 0.1, "num_generations": 8, "max_completion_length": 256},
    "thorough": {"beta": 0.1, "num_generations": 8, "max_completion_length": 512},
    "compact": {"beta": 0.1, "num_generations": 8, "max_completion_length": 256},
}
# A preference run starts from a model that already writes the task: the supervised presets' learning rate (1e-3)
# collapsed the demo's preference run (loss 0 within 8 steps, garbled replies), 5e-5 improved on its start
# (docs/BENCHMARKS.md, "Learning from judgments on the demo"). Reinforcement keeps the preset's rate (not measured).
METHOD_LEARNING_RATES = {TrainingMethod.DPO: 5e-5}


def base_learning_rate(method: str, preset_learning_rate: float) -> float:
    """The learning rate a run of ``method`` takes when none is asked for (the API's multiplier scales this)."""
    return METHOD_LEARNING_RATES.get(method, preset_learning_rate)


USED_BY = {"beta": TrainingMethod.DPO, "num_generations": TrainingMethod.REINFORCEMENT}
USED_BY["max_completion_length"] = TrainingMethod.REINFORCEMENT
RANGES = {"beta": (0.001, 10.0), "num_generations": (2, 64), "max_completion_length": (8, 8192)}
# How a grader that asks a model (score_model, label_model) reaches it during training: factories
# ``project -> call_model | None`` registered by the apps that know the project's models (the API's AppConfig.ready),
# asked in order. Empty: such graders get no score and the run fails saying so.
GRADER_MODEL_CALLERS: list = []


def grader_model_caller(project):
    """``call_model(model, messages, sampling) -> str`` for this project's model graders, or None."""
    for factory in GRADER_MODEL_CALLERS:
        call = factory(project)
        if call is not None:
            return call
    return None


@dataclass
class MethodChoice:
    """What a launch of one method adds to a run's row, once checked."""

    method: str = TrainingMethod.SUPERVISED
    preference_version: PreferenceVersion | None = None
    start_from: Run | None = None
    graders: list = field(default_factory=list)
    hyperparameters: dict = field(default_factory=dict)


def split_overrides(overrides: dict) -> tuple[dict, dict]:
    """(the shared hyperparameters, the method's own: beta, num_generations, max_completion_length)."""
    own = {k: overrides[k] for k in METHOD_FIELDS if k in overrides}
    return {k: v for k, v in overrides.items() if k not in METHOD_FIELDS}, own


def parse_graders(text: str) -> list:
    """Graders typed as JSON (one object or a list of them); ValueError says where the JSON is wrong."""
    if not (text or "").strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"Graders are not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from exc
    return [value] if isinstance(value, dict) else value


def grader_errors(graders) -> str:
    """ "" when the graders are usable, else the first problem, naming the grader (worker/graders.py checks each
    grader's own fields: the same check as the rubric editor's and the API's)."""
    from worker import graders as wg

    if not isinstance(graders, list) or not graders:
        return "Add at least one grader: a list of grader objects, each with a type and a name."
    names = set()
    for i, grader in enumerate(graders, start=1):
        if not isinstance(grader, dict):
            return f"Grader {i} is not an object (got {type(grader).__name__})."
        name = grader.get("name")
        where = f"Grader {i} ({name!r})" if name else f"Grader {i}"
        if not isinstance(name, str) or not name.strip():
            return f"{where} has no name: each grader needs one (its reward is charted under it)."
        if name in names:
            return f"{where}: another grader has the same name; names must differ."
        names.add(name)
        weight = grader.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 100:
            return f"{where} has weight {weight!r}: a number above 0 and at most 100."
        problems = wg.validate(grader)
        if problems:
            return f"{where}, {problems[0]}."
    return ""


def _number(key: str, value, errors: dict) -> float | int | None:
    from .presentation import label

    try:
        number = float(value)
    except (TypeError, ValueError):
        errors[key] = f"{label(key)} must be a number, got {value!r}."
        return None
    if key != "beta":
        if number != int(number):
            errors[key] = f"{label(key)} must be a whole number, got {value!r}."
            return None
        number = int(number)
    low, high = RANGES[key]
    if not low <= number <= high:
        errors[key] = f"{label(key)} must be between {low:g} and {high:g}; got {value}."
        return None
    return number


def resolve_method_hyperparameters(method: str, preset: str, own: dict, errors: dict) -> dict:
    """The method's hyperparameters (preset values, then the overrides, checked); problems go into ``errors``."""
    from .presentation import label

    values = {k: v for k, v in METHOD_PRESETS.get(preset, METHOD_PRESETS["quick"]).items() if USED_BY[k] == method}
    for key, value in own.items():
        if value is None or value == "":
            continue
        if USED_BY[key] != method:
            errors[key] = f"{label(key)} applies only to runs that {TrainingMethod(USED_BY[key]).label.lower()}."
            continue
        number = _number(key, value, errors)
        if number is not None:
            values[key] = number
    return values


def _start_from(project, base_model, start_from, errors: dict) -> Run | None:
    if start_from in (None, ""):
        return None
    run = start_from
    if not isinstance(start_from, Run):
        run = Run.objects.filter(project=project, pk=start_from).first() if str(start_from).isdigit() else None
    if run is None or run.project_id != project.pk:
        errors["start_from"] = "Choose a run of this project to start from."
    elif run.status != RunStatus.SUCCEEDED:
        errors["start_from"] = f"{run} is {run.get_status_display().lower()}: only a finished, succeeded run's model "
        errors["start_from"] += "can be the start."
    elif base_model is not None and run.base_model_id != base_model.pk:
        errors["start_from"] = f"{run} was trained on {run.base_model}, not {base_model}: start from a run of the same "
        errors["start_from"] += "base model."
    elif not artifacts.adapter_available(run):
        errors["start_from"] = f"{run}'s adapter is not available any more: choose another run."
    else:
        return run
    return None


def _preference_version(project, value, errors: dict) -> PreferenceVersion | None:
    if value in (None, ""):
        errors["preference_version"] = "Choose a frozen preference version: learning from preferences trains on its "
        errors["preference_version"] += "pairs."
        return None
    version = value
    if not isinstance(value, PreferenceVersion):
        version = PreferenceVersion.objects.filter(project=project, pk=value).first()
    if version is None or version.project_id != project.pk:
        errors["preference_version"] = "Choose a frozen preference version of this project."
        return None
    if not (version.split_counts or {}).get("train"):
        errors["preference_version"] = f"Preference version {version} has no training pairs: nothing to learn from."
        return None
    leaked = _pairs_in_test_split(version)
    if leaked:
        errors["preference_version"] = (
            f"{leaked} pair(s) of {version} have the input of a test example of v{version.dataset_version.number}: "
            "a model trained on them would be judged on what it learnt. Leave them out and freeze a new version."
        )
        return None
    return version


def _hash(messages: list[dict]) -> str:
    return input_hash([{"role": m.get("role", ""), "content": m.get("content") or ""} for m in messages])


def _pairs_in_test_split(version: PreferenceVersion) -> int:
    """How many of the version's pairs share their input with a test example of its anchoring dataset version."""
    test = {_hash(m) for m in version.dataset_version.items.filter(split="test").values_list("messages", flat=True)}
    pairs = version.items.values_list("messages", "preferred")
    return sum(1 for messages, preferred in pairs if _hash([*messages, preferred]) in test)


def resolve_method(
    *,
    project,
    method: str,
    dataset_version,
    base_model,
    preference_version,
    start_from,
    graders,
    own: dict,
    preset: str,
    errors: dict,
) -> tuple[MethodChoice, DatasetVersion | None]:
    """Check what the method needs; returns its choice and the dataset version the run points at (a dpo run's is its
    preference version's). Problems go into ``errors`` under the form field they concern."""
    method = method or TrainingMethod.SUPERVISED
    if method not in METHODS:
        errors["method"] = f"Unknown method {method!r}: choose one of {', '.join(METHODS)}."
        return MethodChoice(), dataset_version
    choice = MethodChoice(method=method)
    choice.hyperparameters = resolve_method_hyperparameters(method, preset, own, errors)
    choice.start_from = _start_from(project, base_model, start_from, errors)
    if method == TrainingMethod.SUPERVISED:
        if start_from not in (None, ""):
            errors["start_from"] = "Starting from another run is for learning from preferences or from graders."
        return choice, dataset_version
    if method == TrainingMethod.DPO:
        choice.preference_version = _preference_version(project, preference_version, errors)
        if choice.preference_version is not None:
            return choice, choice.preference_version.dataset_version
        return choice, dataset_version
    problem = grader_errors(graders)
    if problem:
        errors["graders"] = problem
    else:
        choice.graders = graders
    return choice, dataset_version


def check_shape(choice: MethodChoice, hp: dict, devices: int, nodes: int, errors: dict) -> None:
    """What the method needs of the shared hyperparameters and the run's scale."""
    if choice.method == TrainingMethod.SUPERVISED:
        return
    if devices * nodes > 1:
        errors["devices"] = f"{TrainingMethod(choice.method).label} trains on one device: leave devices and nodes at 1."
    generations = choice.hyperparameters.get("num_generations")
    if generations and (int(hp["batch_size"]) * int(hp["grad_accum"])) % generations:
        errors["num_generations"] = (
            f"Replies per prompt ({generations}) must divide the batch size x gradient accumulation "
            f"({int(hp['batch_size']) * int(hp['grad_accum'])}): each step compares whole groups of replies."
        )


def adjust_estimate(estimate: dict, choice: MethodChoice, version: DatasetVersion, hp: dict) -> None:
    """Steps of a preference run count its pairs; of a reinforcement run, its prompts x replies per prompt."""
    if choice.method == TrainingMethod.SUPERVISED:
        return
    if choice.method == TrainingMethod.DPO:
        rows = int((choice.preference_version.split_counts or {}).get("train", 0))
    else:
        rows = int((version.split_counts or {}).get("train", 0)) * int(choice.hyperparameters["num_generations"])
    per_epoch = steps_per_epoch(rows, int(hp["batch_size"]), int(hp["grad_accum"])) if rows else 0
    steps = int(hp["max_steps"]) if int(hp["max_steps"]) > 0 else math.ceil(per_epoch * float(hp["epochs"]))
    if estimate.get("steps"):
        estimate["seconds"] = int(estimate["seconds"] * steps / estimate["steps"])
    estimate.update(examples=rows, steps=steps, steps_per_epoch=per_epoch, method=choice.method)


def run_fields(choice: MethodChoice) -> dict:
    """The run row's fields for this choice."""
    return {
        "method": choice.method,
        "preference_version": choice.preference_version,
        "start_from": choice.start_from,
        "graders": choice.graders,
    }


def config_fields(run: Run) -> dict:
    """What `TrainConfig` takes from the run's method (its hyperparameters carry beta and the GRPO values)."""
    start = artifacts.local_adapter_dir(run.start_from) if run.start_from_id else ""
    return {"method": run.method, "graders": list(run.graders or []), "start_adapter_dir": start}


def prompts(version: DatasetVersion, split: str) -> list[dict]:
    """A reinforcement run's prompts: each example's turns before its ideal output, and that output as the
    reference answer."""
    rows = []
    for item in version.items.filter(split=split).order_by("position"):
        messages = item.messages
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
        rows.append({"messages": messages[:last], "tools": item.tools, "reference_answer": item.ideal_output})
    return rows


def training_data(run: Run) -> tuple[list, list]:
    """(train, val) rows as the worker's function for the run's method reads them."""
    if run.method == TrainingMethod.DPO:
        return run.preference_version.training_pairs("train"), run.preference_version.training_pairs("val")
    if run.method == TrainingMethod.REINFORCEMENT:
        return prompts(run.dataset_version, "train"), []
    return run.dataset_version.training_conversations("train"), run.dataset_version.training_conversations("val")
