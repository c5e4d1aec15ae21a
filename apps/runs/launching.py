"""Launching runs: presets and hyperparameters, the estimate and memory plan, launch, cancel, pause and resume
(the dpo and reinforcement halves are in apps/runs/methods.py)."""

from __future__ import annotations

import math
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.datasets.models import DatasetVersion
from apps.fleet.queues import NoQueueError, queue_for
from apps.fleet.selectors import queue_warning, scale_warning, workers_serving
from ftstudio.queueing import send_after_commit
from worker.memory import GB, Shape, estimate_memory, fit_words
from worker.memory import MODES as MEMORY_MODES
from worker.train_config import DEFAULT_TARGETS, steps_per_epoch

from . import methods
from .models import BaseModel, Run, RunStatus
from .presentation import label
from .selectors import measured_throughput
from .signals import announce
from .tasks import train_run

KNOWN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")

# Hyperparameters a run may set (the worker's TrainConfig fields), with their allowed ranges.
PRESETS: dict[str, dict] = {
    "quick": {
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "learning_rate": 1e-3,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.05,
        "epochs": 1.0,
        "max_steps": -1,
        "batch_size": 8,
        "grad_accum": 1,
        "max_seq_length": 256,
        "save_steps": 20,
        "memory_mode": "lora",
        "gradient_checkpointing": "auto",
    },
    "balanced": {
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "target_modules": list(DEFAULT_TARGETS),
        "learning_rate": 5e-4,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.05,
        "epochs": 2.0,
        "max_steps": -1,
        "batch_size": 8,
        "grad_accum": 2,
        "max_seq_length": 512,
        "save_steps": 50,
        "memory_mode": "lora",
        "gradient_checkpointing": "auto",
    },
    "thorough": {
        "lora_r": 32,
        "lora_alpha": 64,
        "lora_dropout": 0.1,
        "target_modules": list(KNOWN_TARGETS),
        "learning_rate": 3e-4,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.05,
        "epochs": 3.0,
        "max_steps": -1,
        "batch_size": 8,
        "grad_accum": 2,
        "max_seq_length": 1024,
        "save_steps": 100,
        "memory_mode": "lora",
        "gradient_checkpointing": "auto",
    },
}
# Balanced on a 4-bit base with checkpointing, adapting every projection: a 7-8B model trains on one 24 GB card.
PRESETS["compact"] = {
    **PRESETS["balanced"],
    "target_modules": list(KNOWN_TARGETS),
    "learning_rate": 2e-4,
    "memory_mode": "qlora",
    "gradient_checkpointing": "on",
}
CHECKPOINTING = ("auto", "on", "off")  # auto: on when the run would not fit its GPU tier without it
RANGES: dict[str, tuple[float, float]] = {
    "lora_r": (1, 256),
    "lora_alpha": (1, 1024),
    "lora_dropout": (0.0, 0.5),
    "learning_rate": (1e-6, 0.1),
    "warmup_ratio": (0.0, 0.5),
    "epochs": (0.01, 50),
    "max_steps": (-1, 100_000),
    "batch_size": (1, 256),
    "grad_accum": (1, 128),
    "max_seq_length": (16, 131_072),
    "save_steps": (1, 100_000),
    "seed": (0, 2**31 - 1),
}
INTEGER_FIELDS = {
    "lora_r",
    "lora_alpha",
    "max_steps",
    "batch_size",
    "grad_accum",
    "max_seq_length",
    "save_steps",
    "seed",
}
# One run on several devices / nodes (worker/distributed.py): more than this is a typo, not a cluster we run.
MAX_DEVICES = 16
MAX_NODES = 8
SCALE_FIELDS = ("devices", "nodes")

# Throughput assumed before any run of a model has finished: LoRA on a 2-core CPU, 135M params ≈ 200 tokens/s.
CPU_TOKENS_PER_SECOND_AT_135M = 200.0


class RunError(ValueError):
    """A run action refused (resume while a worker holds it, ...); the message says why."""


class LaunchError(ValueError):
    """Launch refused; ``errors`` maps a form field (or "__all__") to what is wrong with it."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" if k != "__all__" else v for k, v in errors.items()))


# --- hyperparameters and estimate -------------------------------------------------------------------
def resolve_hyperparameters(preset: str, overrides: dict | None) -> dict:
    """The preset's values with the overrides applied and checked; raises LaunchError naming the field."""
    if preset not in PRESETS:
        raise LaunchError({"preset": f"Unknown preset {preset!r}: choose one of {', '.join(PRESETS)}."})
    hp = {**PRESETS[preset], "seed": 42}
    errors: dict[str, str] = {}
    for key, value in (overrides or {}).items():
        if value is None or value == "":
            continue
        if key not in hp:
            errors[key] = f"{key} is not a hyperparameter (known: {', '.join(sorted(hp))})."
            continue
        if key == "target_modules":
            modules = [m.strip() for m in (value.split(",") if isinstance(value, str) else value) if m.strip()]
            unknown = [m for m in modules if m not in KNOWN_TARGETS]
            if not modules or unknown:
                errors[key] = f"Target modules must be some of {', '.join(KNOWN_TARGETS)}" + (
                    f"; unknown: {', '.join(unknown)}." if unknown else "."
                )
            else:
                hp[key] = modules
            continue
        if key in ("memory_mode", "gradient_checkpointing"):
            choices = MEMORY_MODES if key == "memory_mode" else CHECKPOINTING
            value = {True: "on", False: "off"}.get(value, value) if key == "gradient_checkpointing" else value
            if value not in choices:
                errors[key] = f"{label(key)} must be one of {', '.join(choices)}; got {value!r}."
            else:
                hp[key] = value
            continue
        if key == "lr_scheduler":
            if value not in SCHEDULERS:
                errors[key] = f"Schedule must be one of {', '.join(SCHEDULERS)}."
            else:
                hp[key] = value
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            errors[key] = f"{label(key)} must be a number, got {value!r}."
            continue
        if key in INTEGER_FIELDS:
            if number != int(number):
                errors[key] = f"{label(key)} must be a whole number, got {value!r}."
                continue
            number = int(number)
        low, high = RANGES[key]
        if not low <= number <= high or (key == "max_steps" and number == 0):
            errors[key] = (
                f"{label(key)} must be between {low:g} and {high:g}"
                + (" (-1 means: use epochs)" if key == "max_steps" else "")
                + f"; got {value}."
            )
            continue
        hp[key] = number
    if errors:
        raise LaunchError(errors)
    return hp


def resolve_scale(overrides: dict | None, batch_size: int) -> tuple[int, int]:
    """(devices, nodes) asked in the overrides (1 each when not), checked: whole numbers in range, and a batch size
    that splits evenly over devices x nodes (the run's batch is the global batch, one share per device)."""
    errors: dict[str, str] = {}
    values = {}
    limits = {"devices": MAX_DEVICES, "nodes": MAX_NODES}
    for key in SCALE_FIELDS:
        value = (overrides or {}).get(key)
        if value is None or value == "":
            values[key] = 1
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            errors[key] = f"{key.title()} must be a whole number, got {value!r}."
            continue
        if number != int(number) or not 1 <= number <= limits[key]:
            errors[key] = f"{key.title()} must be a whole number from 1 to {limits[key]}; got {value}."
            continue
        values[key] = int(number)
    if not errors:
        world = values["devices"] * values["nodes"]
        if batch_size % world:
            errors["batch_size"] = (
                f"Batch size {batch_size} does not split evenly over {world} devices ({values['devices']} per node x "
                f"{values['nodes']} node(s)): choose a multiple of {world}, each device trains on an equal share."
            )
    if errors:
        raise LaunchError(errors)
    return values["devices"], values["nodes"]


def _train_tokens(version: DatasetVersion, max_seq_length: int) -> tuple[int, int]:
    """(examples, tokens) of the train split, from the version's token stats or a length estimate."""
    stats = (version.token_stats or {}).get("train") or {}
    count = int((version.split_counts or {}).get("train", 0))
    if stats.get("count"):
        mean = min(float(stats.get("mean") or 0) + 40, max_seq_length)  # + the chat template's own tokens
        return count, int(mean * count)
    chars = sum(len(m.get("content") or "") for conv in version.conversations("train") for m in conv)
    return count, int(min(chars / 4 + 40 * count, max_seq_length * count))


def model_shape(base_model: BaseModel) -> Shape:
    """The registered model's shape (from its config.json), or a Llama-like guess from its parameter count."""
    if base_model.shape:
        return Shape(**base_model.shape)
    return Shape.guess(base_model.parameter_count or 135_000_000)


def _batch_tokens(version: DatasetVersion, hp: dict, per_device_batch: int) -> int:
    """Tokens in the largest batch one device trains: its share of the batch, each example as long as the
    longest of the train split (with the chat template's own tokens), at most the max sequence length."""
    stats = (version.token_stats or {}).get("train") or {}
    longest = float(stats.get("max") or 0) + 40 if stats.get("count") else float(hp["max_seq_length"])
    return max(1, per_device_batch * int(min(longest, int(hp["max_seq_length"]))))


def memory_needs(base_model: BaseModel, hp: dict, batch_tokens: int, device: str, checkpointing: bool):
    return estimate_memory(
        model_shape(base_model),
        mode=hp.get("memory_mode", "lora"),
        device=device,
        lora_r=int(hp["lora_r"]),
        target_modules=hp["target_modules"],
        lora_dropout=float(hp["lora_dropout"]),
        batch_tokens=batch_tokens,
        gradient_checkpointing=checkpointing,
    )


def fit_table(base_model: BaseModel, hp: dict, batch_tokens: int) -> list[dict]:
    """Which memory mode fits which GPU tier, for this run's batch: one row per mode with and without
    checkpointing, its need in GB and a sentence per tier."""
    rows = []
    for mode in MEMORY_MODES:
        for checkpointing in (False, True):
            need = memory_needs(base_model, {**hp, "memory_mode": mode}, batch_tokens, "cuda", checkpointing)
            rows.append(
                {
                    "mode": mode,
                    "checkpointing": checkpointing,
                    "gb": round(need.gb, 1),
                    "tiers": [(tier, fit_words(need.total, tier)) for tier in sorted(settings.FTSTUDIO_GPU_TIERS)],
                }
            )
    return rows


def launch_fit_table(*, dataset_version, base_model, preset: str, overrides: dict | None) -> list[dict]:
    """`fit_table` for a launch form's choices, also when the launch itself is refused (a run too large for the
    card asked for): [] where the choices are not valid enough to size a batch."""
    overrides, _method_own = methods.split_overrides(dict(overrides or {}))
    overrides.pop("gpu_gb", None)
    scale = {key: overrides.pop(key, None) for key in SCALE_FIELDS}
    if not isinstance(base_model, BaseModel) or not isinstance(dataset_version, DatasetVersion):
        return []
    try:
        hp = resolve_hyperparameters(preset, overrides)
        devices, nodes = resolve_scale(scale, int(hp["batch_size"]))
    except LaunchError:
        return []
    per_device_batch = max(1, int(hp["batch_size"]) // (devices * nodes))
    return fit_table(base_model, hp, _batch_tokens(dataset_version, hp, per_device_batch))


def _serves_gpu(queue: str) -> bool:
    return any(w.gpu_count for w in workers_serving(queue))


def plan_memory(base_model: BaseModel, hp: dict, batch_tokens: int, gpu_gb: int) -> tuple[str, int, object]:
    """(queue, tier GB or 0, memory estimate) of a run, and its gradient checkpointing decided (hp is updated).

    A GPU tier asked for (``gpu_gb``) must hold the run, else LaunchError with the numbers. Without one, a model
    that needs a GPU (``min_gpu_gb``) goes to the smallest tier that holds it (without checkpointing if it fits so,
    else with); any other goes to the queue every worker serves, sized for a GPU if one of them has one. "auto"
    checkpointing is on only where the run would not fit its tier without it."""
    asked = hp.get("gradient_checkpointing", "auto")
    options = [asked == "on"] if asked != "auto" else [False, True]
    tiers = sorted(settings.FTSTUDIO_GPU_TIERS)
    if gpu_gb or base_model.min_gpu_gb:
        candidates = [gpu_gb] if gpu_gb else [t for t in tiers if t >= base_model.min_gpu_gb]
        needs = {}
        for tier in candidates:
            for checkpointing in options:
                need = needs.setdefault(
                    checkpointing, memory_needs(base_model, hp, batch_tokens, "cuda", checkpointing)
                )
                if need.total <= tier * GB:
                    hp["gradient_checkpointing"] = checkpointing
                    return queue_for(tier), tier, need
        smallest = min(needs.values(), key=lambda n: n.total)
        where = f"a {gpu_gb} GB card" if gpu_gb else f"any GPU tier ({', '.join(f'{t} GB' for t in candidates)})"
        raise LaunchError(
            {
                "gpu_gb" if gpu_gb else "__all__": (
                    f"This run needs about {smallest.gb:.1f} GB"
                    + (" even with gradient checkpointing" if smallest.gradient_checkpointing else "")
                    + f", which does not fit {where}: "
                    + f"{fit_words(smallest.total, gpu_gb or max(candidates or [0]))}. "
                    "Train on the 4-bit base, turn checkpointing on, lower the batch size or the sequence length, "
                    "or choose a larger card."
                )
            }
        )
    queue = queue_for(0)
    device = "cuda" if _serves_gpu(queue) else "cpu"
    hp["gradient_checkpointing"] = asked == "on"
    return queue, 0, memory_needs(base_model, hp, batch_tokens, device, hp["gradient_checkpointing"])


def estimate_run(
    *,
    base_model: BaseModel,
    dataset_version: DatasetVersion,
    hyperparameters: dict,
    devices: int = 1,
    nodes: int = 1,
    gpu_gb: int = 0,
) -> dict:
    """Tokens, optimizer steps, seconds and peak memory of a run, before it is launched. With several devices the
    steps are the same (the batch is global); the seconds assume the measured single-worker rate (no speed-up is
    promised before one is measured) and the memory is one device's (its share of the batch), from
    `worker.memory.estimate_memory`; it picks the GPU tier (`plan_memory`), which decides ``hyperparameters``'
    gradient checkpointing (updated in place)."""
    hp = hyperparameters
    examples, tokens = _train_tokens(dataset_version, int(hp["max_seq_length"]))
    per_epoch = steps_per_epoch(examples, int(hp["batch_size"]), int(hp["grad_accum"])) if examples else 0
    steps = int(hp["max_steps"]) if int(hp["max_steps"]) > 0 else math.ceil(per_epoch * float(hp["epochs"]))
    epochs_seen = steps / per_epoch if per_epoch else 0
    total_tokens = int(tokens * epochs_seen)
    measured = measured_throughput(base_model)
    params = base_model.parameter_count or 135_000_000
    rate = measured or CPU_TOKENS_PER_SECOND_AT_135M * 135_000_000 / params
    per_device_batch = max(1, int(hp["batch_size"]) // (devices * nodes))
    batch_tokens = _batch_tokens(dataset_version, hp, per_device_batch)
    queue, tier, memory = plan_memory(base_model, hp, batch_tokens, gpu_gb)
    return {
        "examples": examples,
        "tokens": total_tokens,
        "steps": steps,
        "steps_per_epoch": per_epoch,
        "seconds": int(total_tokens / rate) + 30,
        "memory_mb": int(memory.total / 2**20),
        "memory_parts_mb": {k: int(v / 2**20) for k, v in memory.parts().items()},
        "memory_device": "GPU" if memory.device != "cpu" else "CPU",
        "gpu_gb": tier,
        "fit": fit_words(memory.total, tier) if tier else "",
        "memory_mode": memory.mode,
        "gradient_checkpointing": memory.gradient_checkpointing,
        "batch_tokens": batch_tokens,
        "tokens_per_second": round(rate, 1),
        "throughput_source": "measured" if measured else "assumed",
        "queue": queue,
        "queue_warning": queue_warning(queue),
        "devices": devices,
        "nodes": nodes,
        "per_device_batch": int(hp["batch_size"]) // (devices * nodes),
        "scale_warning": scale_warning(queue, devices, nodes),
    }


# --- launch, cancel ---------------------------------------------------------------------------------
def _base_model_from(base_model) -> BaseModel | None:
    if isinstance(base_model, BaseModel):
        return base_model
    if isinstance(base_model, int):
        return BaseModel.objects.filter(pk=base_model).first()
    return BaseModel.objects.filter(name=str(base_model or "")).first()


def prepare_launch(
    *,
    project,
    dataset_version,
    base_model,
    preset: str = "quick",
    overrides: dict | None = None,
    method: str = "supervised",
    preference_version=None,
    start_from=None,
    graders=None,
    with_method: bool = False,
):
    """Validate a launch without saving: (version, base model, hyperparameters, estimate) or LaunchError; with
    ``with_method`` also the method's choice (`methods.MethodChoice`: preference version, start run, graders)."""
    errors: dict[str, str] = {}
    model = _base_model_from(base_model)
    overrides, own = methods.split_overrides(dict(overrides or {}))
    if method in methods.METHOD_LEARNING_RATES and overrides.get("learning_rate") in (None, ""):
        overrides["learning_rate"] = methods.METHOD_LEARNING_RATES[method]
    choice, dataset_version = methods.resolve_method(
        project=project,
        method=method,
        dataset_version=dataset_version,
        base_model=model,
        preference_version=preference_version,
        start_from=start_from,
        graders=graders,
        own=own,
        preset=preset,
        errors=errors,
    )
    version = dataset_version
    if isinstance(version, int):
        version = DatasetVersion.objects.filter(project=project, number=version).first()
    if version is None or not isinstance(version, DatasetVersion) or version.project_id != project.pk:
        errors["dataset_version"] = "Choose a frozen dataset version of this project (freeze one on the versions page)."
    elif not (version.split_counts or {}).get("train"):
        errors["dataset_version"] = f"Dataset version v{version.number} has no training examples: nothing to train on."
    if model is None:
        errors["base_model"] = f"Unknown base model {base_model!r}: choose one from the registry."
    else:
        try:
            queue_for(model.min_gpu_gb)
        except NoQueueError as exc:
            errors["base_model"] = f"{model} needs {model.min_gpu_gb} GB of GPU memory. {exc}"
    overrides = dict(overrides or {})
    scale = {key: overrides.pop(key, None) for key in SCALE_FIELDS}
    gpu_gb = overrides.pop("gpu_gb", None) or 0
    if gpu_gb and int(gpu_gb) not in settings.FTSTUDIO_GPU_TIERS:
        errors["gpu_gb"] = (
            f"There is no {gpu_gb} GB GPU tier: choose one of "
            f"{', '.join(f'{t} GB' for t in sorted(settings.FTSTUDIO_GPU_TIERS))}, or let the estimate pick."
        )
    elif gpu_gb and model is not None and int(gpu_gb) < model.min_gpu_gb:
        errors["gpu_gb"] = f"{model} needs a card of at least {model.min_gpu_gb} GB; {gpu_gb} GB is too small."
    devices = nodes = 1
    try:
        hp = resolve_hyperparameters(preset, overrides)
    except LaunchError as exc:
        errors.update(exc.errors)
        hp = None
    if hp is not None:
        try:
            devices, nodes = resolve_scale(scale, int(hp["batch_size"]))
        except LaunchError as exc:
            errors.update(exc.errors)
    if hp is not None:
        hp.update(choice.hyperparameters)
        methods.check_shape(choice, hp, devices, nodes, errors)
    if hp is not None and model is not None and hp["max_seq_length"] > model.context_length:
        errors["max_seq_length"] = (
            f"{label('max_seq_length')} {hp['max_seq_length']} is over {model}'s context length "
            f"of {model.context_length} tokens."
        )
    if errors:
        raise LaunchError(errors)
    estimate = estimate_run(
        base_model=model, dataset_version=version, hyperparameters=hp, devices=devices, nodes=nodes, gpu_gb=int(gpu_gb)
    )
    methods.adjust_estimate(estimate, choice, version, hp)
    if hp["memory_mode"] == "qlora" and not estimate["gpu_gb"] and not _serves_gpu(estimate["queue"]):
        raise LaunchError(
            {
                "memory_mode": (
                    "A 4-bit base needs an NVIDIA GPU (its 4-bit layers run on CUDA only), and no worker with a GPU "
                    f"serves this run's queue ({estimate['queue']}): choose the full-precision base, or a GPU card."
                )
            }
        )
    return (version, model, hp, estimate, choice) if with_method else (version, model, hp, estimate)


def launch_run(
    *,
    project,
    dataset_version,
    base_model,
    preset: str = "quick",
    overrides: dict | None = None,
    user=None,
    name: str = "",
    method: str = "supervised",
    preference_version=None,
    start_from=None,
    graders=None,
) -> Run:
    """Validate and queue a run (task `runs.train_run` on queue gpu, after the transaction commits). ``method``
    "dpo" needs a ``preference_version``, "reinforcement" ``graders`` (apps/runs/methods.py checks them)."""
    version, model, hp, estimate, choice = prepare_launch(
        project=project,
        dataset_version=dataset_version,
        base_model=base_model,
        preset=preset,
        overrides=overrides,
        method=method,
        preference_version=preference_version,
        start_from=start_from,
        graders=graders,
        with_method=True,
    )
    with transaction.atomic():
        run = Run.objects.create(
            project=project,
            **methods.run_fields(choice),
            dataset_version=version,
            base_model=model,
            preset=preset,
            hyperparameters=hp,
            seed=hp["seed"],
            estimate=estimate,
            devices=estimate["devices"],
            nodes=estimate["nodes"],
            name=name,
            total_steps=estimate["steps"],
            created_by=user if getattr(user, "pk", None) else None,
            enqueued_at=timezone.now(),
        )
        send_after_commit(train_run, run.pk)
    return run


def cancel_run(*, run: Run) -> Run:
    """Ask a run to stop: a queued or paused run is cancelled now, a running one within one training step."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        if run.is_finished:
            return run
        if run.status in {RunStatus.QUEUED, RunStatus.PAUSED}:
            if run.mark_cancelled(cancel_requested=True):
                announce(run.pk)
        else:
            run.write(cancel_requested=True)
    return run


def resume_run(*, run: Run, user=None) -> Run:
    """Resume a failed, paused or stranded run (queued with a lost message, or running with no live worker) from its
    last checkpoint: it is queued again with a fresh attempt budget. Raises RunError saying why not."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        if not run.resumable:
            if run.status == RunStatus.RUNNING:
                raise RunError(
                    f"{run} is being trained by a live worker right now (heartbeat "
                    f"{run.heartbeat_at:%H:%M:%S} UTC): nothing to resume."
                )
            if run.status == RunStatus.QUEUED and not run.cancel_requested:
                raise RunError(
                    f"{run} was queued at {run.enqueued_at or run.created_at:%H:%M:%S} UTC and is waiting for a "
                    "worker: nothing to resume yet."
                )
            raise RunError(f"{run} is {run.get_status_display().lower()}: only failed or stranded runs can be resumed.")
        checkpoint = Path(run.checkpoint_path).name if run.checkpoint_path else "the start (no checkpoint yet)"
        who = f" by {user}" if getattr(user, "pk", None) else ""
        line = (
            f"resume requested{who} on {timezone.now():%Y-%m-%d %H:%M:%S} UTC after {run.attempts} "
            f"attempt(s): from {checkpoint}"
        )
        run.mark_queued(
            attempts=0,
            error="",
            finished_at=None,
            cancel_requested=False,
            pause_requested=False,
            log_tail="\n".join([*run.log_tail.splitlines()[-199:], line]),
        )
        send_after_commit(train_run, run.pk)
    return run


def pause_run(*, run: Run) -> Run:
    """Pause a queued or running run: a queued one is paused now, a running one stops at its next step end with a
    checkpoint of that step (status paused, its attempt given back). Raises RunError for any other status."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        if run.status not in {RunStatus.QUEUED, RunStatus.RUNNING} or run.cancel_requested:
            raise RunError(f"{run} is {run.get_status_display().lower()}: only a queued or running run can be paused.")
        if run.status == RunStatus.QUEUED:
            run.write(pause_requested=True, status=RunStatus.PAUSED)
        else:
            run.write(pause_requested=True)
    return run


def resume_paused_run(*, run: Run) -> Run:
    """Queue a paused run again (it goes on from its last checkpoint); a pause not yet reached is withdrawn.
    Raises RunError when the run is neither paused nor pausing."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        if run.status == RunStatus.RUNNING and run.pause_requested:
            run.write(pause_requested=False)
            return run
        if run.status != RunStatus.PAUSED:
            raise RunError(
                f"{run} is {run.get_status_display().lower()}, not paused: only a paused run can be resumed."
            )
        run.mark_queued(
            pause_requested=False,
            log_tail="\n".join(
                [*run.log_tail.splitlines()[-199:], f"resumed on {timezone.now():%Y-%m-%d %H:%M:%S} UTC"]
            ),
        )
        send_after_commit(train_run, run.pk)
    return run
