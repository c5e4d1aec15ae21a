"""OpenAI's fine-tuning API, jobs: create a job, validate its files and launch its run (supervised here, dpo and
reinforcement in ``ft_method_jobs``), adopt browser runs, cancel, pause and resume, and the API's reaper pass."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.datasets import importers
from apps.datasets import importing as datasets_importing
from apps.datasets import services as datasets
from apps.datasets import versions as datasets_versions
from apps.datasets.importers import content_hash
from apps.datasets.models import Example
from apps.runs import launching, methods
from apps.runs.models import BaseModel, ReaperBeat, Run, RunStatus
from ftstudio.queueing import send_after_commit

from . import metadata as metadata_rule
from .fine_tuning import (
    HYPERPARAMETERS,
    JOB_FIELDS,
    PRESET,
    WHOLE_HYPERPARAMETERS,
    Conflict,
    Invalid,
    NotFound,
    _Invalid,
    job_status,
    jobs_with_runs,
)
from .ft_files import ResultFile, get_file, open_file
from .ft_method_jobs import validate_and_launch_method
from .models import ApiFile, FineTuningJob, JobStage
from .selectors import resolve_model
from .tasks import validate_fine_tuning_job

# --- jobs: create -----------------------------------------------------------------------------------------
METHODS = ("supervised", "dpo", "reinforcement")
METHOD_HYPERPARAMETERS = {
    "supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
    "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"),
    "reinforcement": (
        "n_epochs",
        "batch_size",
        "learning_rate_multiplier",
        "compute_multiplier",
        "eval_interval",
        "eval_samples",
        "reasoning_effort",
    ),
}
DEFAULT_BETA = 0.1  # worker.train_config.TrainConfig.beta


@dataclass(frozen=True)
class MethodRequest:
    """The method a job asks for: its type, its requested hyperparameters (``where`` they were given) and, for
    reinforcement, its grader."""

    type: str
    hyperparameters: dict
    where: str
    grader: dict | None = None


def _method(body: dict) -> MethodRequest:
    """The requested method (``method``, or the older top-level ``hyperparameters`` for supervised)."""
    method = body.get("method")
    top = body.get("hyperparameters")
    if method is None:
        return MethodRequest("supervised", top or {}, "hyperparameters")
    if not isinstance(method, dict):
        raise Invalid('method must be an object such as {"type": "supervised", "supervised": {...}}.', param="method")
    kind = method.get("type")
    if kind not in METHODS:
        raise Invalid(f"method.type must be one of {', '.join(METHODS)}; got {kind!r}.", param="method.type")
    for key in sorted(set(method) - {"type", kind}):
        raise Invalid(f"Unknown field method.{key} (a {kind} method has method.{kind}).", param=f"method.{key}")
    inner = method.get(kind) or {}
    if not isinstance(inner, dict):
        raise Invalid(f"method.{kind} must be an object.", param=f"method.{kind}")
    for key in sorted(set(inner) - {"hyperparameters", *(("grader",) if kind == "reinforcement" else ())}):
        raise Invalid(f"Unknown field method.{kind}.{key}.", param=f"method.{kind}.{key}")
    if top is not None:
        raise Invalid(
            f"Give hyperparameters in method.{kind}.hyperparameters or at the top level, not both.",
            param="hyperparameters",
        )
    if kind == "reinforcement" and inner.get("grader") is None:
        raise Invalid(
            "method.reinforcement.grader is required: the grader that rewards the model's replies.",
            param="method.reinforcement.grader",
        )
    return MethodRequest(
        kind, inner.get("hyperparameters") or {}, f"method.{kind}.hyperparameters", inner.get("grader")
    )


def _overrides(requested, where: str, kind: str = "supervised") -> tuple[dict, dict]:
    """(the run's hyperparameter overrides, the method's own settings such as dpo's beta)."""
    if not isinstance(requested, dict):
        raise Invalid(f"{where} must be an object.", param=where)
    overrides, extra = {}, {}
    base_lr = methods.base_learning_rate(kind, launching.PRESETS[PRESET]["learning_rate"])
    for key, value in requested.items():
        if key not in METHOD_HYPERPARAMETERS[kind]:
            raise Invalid(
                f"Unknown hyperparameter {where}.{key}: use {', '.join(METHOD_HYPERPARAMETERS[kind])}.",
                param=f"{where}.{key}",
            )
        if key == "reasoning_effort":
            if value not in ("default", None):
                raise Invalid(
                    f'{where}.reasoning_effort: the Studio\'s models do not reason at a set effort; send "default".',
                    param=f"{where}.{key}",
                )
            continue
        if value == "auto" or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f'{where}.{key} must be a number or "auto"; got {value!r}.', param=f"{where}.{key}")
        if key in ("compute_multiplier", "eval_interval", "eval_samples"):
            raise Invalid(
                f'{where}.{key}: the Studio sets this itself; send "auto" (the run page shows the reward on the '
                "validation split at every evaluation).",
                param=f"{where}.{key}",
            )
        if key == "beta":
            if not 0 < value <= 2:
                raise Invalid(f"{where}.beta must be above 0 and at most 2; got {value}.", param=f"{where}.{key}")
            extra["beta"] = float(value)
            continue
        if key in WHOLE_HYPERPARAMETERS:
            low, high = WHOLE_HYPERPARAMETERS[key]
            if not float(value).is_integer() or not low <= value <= high:
                raise Invalid(
                    f'{where}.{key} must be a whole number from {low} to {high} or "auto"; got {value!r}.',
                    param=f"{where}.{key}",
                )
            value = int(value)
        if key == "learning_rate_multiplier":
            if value <= 0:
                raise Invalid(f"{where}.{key} must be above 0; got {value}.", param=f"{where}.{key}")
            value = base_lr * value
        overrides[HYPERPARAMETERS[key]] = value
    return overrides, extra


def resolved_method(hp: dict, preset: str = PRESET, kind: str = "supervised", grader: dict | None = None) -> dict:
    """The job's ``method`` in OpenAI's shape, with the values the run uses (``hp``: its hyperparameters, with
    ``beta`` for dpo)."""
    base_lr = methods.base_learning_rate(
        kind, launching.PRESETS.get(preset or PRESET, launching.PRESETS[PRESET])["learning_rate"]
    )
    epochs = hp.get("epochs", 1.0)
    hyperparameters = {
        "n_epochs": int(epochs) if float(epochs).is_integer() else epochs,
        "batch_size": hp.get("batch_size"),
        "learning_rate_multiplier": round(hp.get("learning_rate", base_lr) / base_lr, 6),
    }
    if kind == "dpo":
        hyperparameters["beta"] = hp.get("beta", DEFAULT_BETA)
    inner = {"hyperparameters": hyperparameters}
    if kind == "reinforcement":
        inner = {"grader": grader or {}, **inner}
    return {"type": kind, kind: inner}


def run_method(run: Run) -> dict:
    """A run's method in OpenAI's shape (a run launched in the browser: its graders, the first as the job's)."""
    kind = getattr(run, "method", "supervised") or "supervised"
    from worker.graders import as_multi

    graders = list(getattr(run, "graders", []) or [])
    grader = {k: v for k, v in graders[0].items() if k != "weight"} if len(graders) == 1 else as_multi(graders)
    return resolved_method(run.hyperparameters, run.preset, kind, grader if kind == "reinforcement" else None)


def _check_body(body) -> None:
    if not isinstance(body, dict):
        raise Invalid("The body must be a JSON object.")
    for key in sorted(set(body) - JOB_FIELDS):
        raise Invalid(
            f"Unknown field {key!r}: the Studio takes {', '.join(sorted(JOB_FIELDS - {'integrations'}))}.",
            param=key,
        )
    if body.get("integrations"):
        raise Invalid(
            "integrations (e.g. Weights & Biases) are not supported: the Studio shows the loss curve on the run page.",
            param="integrations",
        )
    for key in ("model", "training_file"):
        if not isinstance(body.get(key), str) or not body.get(key):
            raise Invalid(f"{key} is required (a string).", param=key)
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
        raise Invalid("suffix must be a string of at most 64 characters.", param="suffix")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1):
        raise Invalid(f"seed must be a whole number from 0 to {2**31 - 1}; got {seed!r}.", param="seed")
    found = metadata_rule.problem(body.get("metadata"))
    if found is not None:
        raise Invalid(found[0], param="metadata")


def _base_model(project, model_id: str) -> BaseModel:
    if model_id.startswith("ft:"):
        try:
            resolve_model(project, model_id)
        except LookupError:
            pass
        else:
            raise Invalid(
                f"Fine-tuning {model_id!r} further is not supported yet: start from its base model.", param="model"
            )
    base = BaseModel.objects.filter(name=model_id).first()
    if base is None:
        raise NotFound(
            f"The model {model_id!r} is not a base model this Studio can fine-tune: GET /v1/models "
            "lists them (the ids without 'ft:').",
            param="model",
            code="model_not_found",
        )
    return base


def request_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def create_job(*, project, user, key, body, idempotency_key: str = "", access=None) -> FineTuningJob:
    """Check the request, then validate the files and launch the run (see the module's docstring). The same
    ``Idempotency-Key`` returns the job already made instead of starting a second run; without one, every request
    makes a job, as OpenAI's API does."""
    _check_body(body)
    digest, idempotency_key = request_hash(body), idempotency_key[:255]
    if idempotency_key:
        earlier = FineTuningJob.objects.filter(project=project, idempotency_key=idempotency_key).first()
        if earlier is not None:
            if earlier.request_hash != digest:
                raise Conflict(
                    "This Idempotency-Key was used for a different request: use a new key for a new job.",
                    code="idempotency_key_reused",
                )
            return earlier
    method = _method(body)
    where = method.where
    overrides, extra = _overrides(method.hyperparameters, where, method.type)
    grader = None
    if method.grader is not None:
        from .graders import GraderInvalid, check_grader

        try:
            grader = check_grader(
                method.grader, project=project, user=user, access=access, where="method.reinforcement.grader"
            )
        except GraderInvalid as exc:
            raise Invalid(exc.message, param=exc.param, code="invalid_grader") from None
    if body.get("seed") is not None:
        overrides["seed"] = body["seed"]
    base = _base_model(project, body["model"])
    files = {"training_file": get_file(project, body["training_file"], param="training_file")}
    if body.get("validation_file"):
        files["validation_file"] = get_file(project, body["validation_file"], param="validation_file")
    for param, found in files.items():
        if isinstance(found, ResultFile):
            raise Invalid(f"{param} {found.public_id!r} is a job's result file, not training data.", param=param)
    try:
        hp = launching.resolve_hyperparameters(PRESET, overrides)
    except launching.LaunchError as exc:
        field, message = next(iter(exc.errors.items()))
        reverse = {v: k for k, v in HYPERPARAMETERS.items()}
        raise Invalid(message, param=f"{where}.{reverse[field]}" if field in reverse else field) from None
    try:
        with transaction.atomic():
            job = FineTuningJob.objects.create(
                project=project,
                created_by=user,
                api_key=key,
                model=base.name,
                training_file=body["training_file"],
                validation_file=body.get("validation_file") or "",
                suffix=body.get("suffix") or "",
                seed=hp["seed"],
                metadata=body.get("metadata") or {},
                method=resolved_method({**hp, **extra}, PRESET, method.type, grader),
                overrides={**overrides, **extra},
                idempotency_key=idempotency_key,
                request_hash=digest,
            )
    except IntegrityError:  # the same Idempotency-Key, sent twice at once: the first one made the job
        return FineTuningJob.objects.get(project=project, idempotency_key=idempotency_key)
    if sum(f.bytes for f in files.values()) > settings.FTSTUDIO_IMPORT_INLINE_BYTES:
        send_after_commit(validate_fine_tuning_job, job.pk)
        return job
    return validate_and_launch(job.pk)


def _import(job, record: ApiFile, param: str, user) -> tuple[list[int], dict]:
    with open_file(record) as stream:
        report = datasets_importing.import_examples(
            project=job.project,
            path_or_file=stream,
            file_format="openai",
            user=user,
            filename=f"{record.public_id} ({record.filename})",
        )
    if not report.ok:
        first = report.errors[0]
        more = (
            f" (and {report.error_count - 1} more problem{'s' if report.error_count > 2 else ''})"
            if report.error_count > 1
            else ""
        )
        raise _Invalid(
            {
                "code": "invalid_" + param,
                "param": param,
                "message": f"{param} {record.public_id}: {first}{more}. Fix the file, upload it again and "
                "create a new job; nothing was imported.",
            }
        )
    hashes = []
    with open_file(record) as stream:
        for row in importers.parse_stream(
            stream, importers.Parsed("openai"), limits=datasets_importing.import_limits()
        ):
            hashes.append(content_hash(row.messages, row.tools))
    ids = dict(
        Example.objects.filter(project=job.project, content_hash__in=set(hashes)).values_list("content_hash", "id")
    )
    return [ids[h] for h in hashes if h in ids], {
        "examples": len(hashes),
        "imported": report.imported,
        "already_in_project": report.skipped_duplicates,
    }


def validate_and_launch(job_pk: int) -> FineTuningJob | None:
    """OpenAI's validating_files step: import, freeze and launch atomically; a problem fails the job, naming it.
    A job already validated (a second delivery of the task) is left as it is."""
    kind = (FineTuningJob.objects.filter(pk=job_pk).values_list("method", flat=True).first() or {}).get("type")
    if kind in ("dpo", "reinforcement"):
        return validate_and_launch_method(job_pk)
    try:
        with transaction.atomic():
            job = FineTuningJob.objects.select_for_update().filter(pk=job_pk, stage=JobStage.VALIDATING).first()
            if job is None:
                return FineTuningJob.objects.filter(pk=job_pk).first()
            user, overrides = job.created_by, job.overrides
            base = BaseModel.objects.filter(name=job.model).first()
            if base is None:
                raise _Invalid(
                    {
                        "code": "model_not_found",
                        "param": "model",
                        "message": f"The base model {job.model!r} was removed before the job started.",
                    }
                )
            files = {}
            for param in ("training_file", "validation_file"):
                file_id = getattr(job, param)
                if file_id:
                    files[param] = ApiFile.objects.filter(project=job.project, public_id=file_id).first()
                    if files[param] is None:
                        raise _Invalid(
                            {
                                "code": "file_not_found",
                                "param": param,
                                "message": f"{param} {file_id} was deleted before it was validated.",
                            }
                        )
            train_ids, train_report = _import(job, files["training_file"], "training_file", user)
            splits, report = {"train": train_ids}, {"training_file": train_report}
            if "validation_file" in files:
                splits["val"], report["validation_file"] = _import(
                    job, files["validation_file"], "validation_file", user
                )
                report["validation_file"]["also_in_training_file"] = len(set(splits["val"]) & set(train_ids))
            try:
                version = datasets_versions.freeze_selection(
                    project=job.project,
                    splits=splits,
                    user=user,
                    note=f"fine-tuning job {job.public_id}",
                    keep_val_overlap=True,
                )
            except datasets.FreezeError as exc:
                raise _Invalid(
                    {"code": "invalid_training_file", "param": "training_file", "message": str(exc)}
                ) from None
            report["dataset_version"] = version.number
            try:
                run = launching.launch_run(
                    project=job.project,
                    dataset_version=version,
                    base_model=base,
                    preset=PRESET,
                    overrides=overrides,
                    user=user,
                    name=job.suffix,
                )
            except launching.LaunchError as exc:
                raise _Invalid({"code": "invalid_request", "param": None, "message": str(exc)}) from None
            job.mark_launched(run=run, files_report=report)
    except _Invalid as exc:
        FineTuningJob(pk=job_pk).mark_failed(exc.error)
    return jobs_with_runs().get(pk=job_pk)


def reap() -> dict[str, list[int]]:
    """The API's periodic recovery pass (`api.reap`); records that it ran (the staff alarm reads it)."""
    now = timezone.now()
    result = {"validating_jobs": resend_validating_jobs(now), "adopted_runs": adopt_runs()}
    return ReaperBeat.record("api", result, now)


def resend_validating_jobs(now=None) -> list[int]:
    """For the reaper: jobs still validating after FTSTUDIO_REQUEUE_AFTER_SECONDS lost their task's message (or
    its worker died); send it again (a job validated meanwhile is left alone by the task)."""
    bound = (now or timezone.now()) - timedelta(seconds=settings.FTSTUDIO_REQUEUE_AFTER_SECONDS)
    stale = list(FineTuningJob.objects.filter(stage=JobStage.VALIDATING, updated_at__lt=bound))
    for job in stale:
        job.note_resent()
        validate_fine_tuning_job.delay(job.pk)
    return [job.pk for job in stale]


def adopt_run(run: Run) -> FineTuningJob | None:
    """Give a run launched in the browser its job, so the API lists it (None when it has one already: a job's own
    run, or adopted before). Called once the run's creation commits (ApiConfig.ready) and by `api.reap`."""
    if FineTuningJob.objects.filter(run=run).exists():
        return None
    try:
        with transaction.atomic():
            job = FineTuningJob.objects.create(
                project=run.project,
                created_by=run.created_by,
                run=run,
                stage=JobStage.LAUNCHED,
                model=run.base_model.name,
                suffix=run.name[:64],
                seed=run.seed,
                method=run_method(run),
            )
            FineTuningJob.objects.filter(pk=job.pk).update(created_at=run.created_at)
    except IntegrityError:  # adopted concurrently
        return None
    return job


def adopt_runs(project=None) -> list[int]:
    """Every run (of ``project``) without a job gets one: runs from before jobs were made at launch, or whose
    adoption after the commit was lost. Returns the runs adopted."""
    orphans = Run.objects.filter(fine_tuning_job__isnull=True).select_related("base_model", "project")
    if project is not None:
        orphans = orphans.filter(project=project)
    return [run.pk for run in orphans if adopt_run(run) is not None]


# --- jobs: cancel, pause, resume --------------------------------------------------------------------------
def _finished(job: FineTuningJob, action: str) -> Conflict:
    return Conflict(
        f"Job {job.public_id} is {job_status(job)}: a {job_status(job)} job cannot be {action}.",
        code="job_not_" + action.replace(" ", "_"),
    )


def cancel_job(job: FineTuningJob) -> FineTuningJob:
    if job.run is None or job.run.is_finished:
        raise _finished(job, "cancelled")
    launching.cancel_run(run=job.run)
    job.run.refresh_from_db()
    return job


def pause_job(job: FineTuningJob) -> FineTuningJob:
    if job.run is None or job.run.status not in {RunStatus.QUEUED, RunStatus.RUNNING} or job.run.cancel_requested:
        raise _finished(job, "paused")
    try:
        launching.pause_run(run=job.run)
    except launching.RunError as exc:
        raise Conflict(str(exc), code="job_not_paused") from None
    job.run.refresh_from_db()
    return job


def resume_job(job: FineTuningJob) -> FineTuningJob:
    if job.run is None or not (
        job.run.status == RunStatus.PAUSED or (job.run.status == RunStatus.RUNNING and job.run.pause_requested)
    ):
        raise Conflict(
            f"Job {job.public_id} is {job_status(job)}, not paused: only a paused job can be resumed.",
            code="job_not_paused",
        )
    launching.resume_paused_run(run=job.run)
    job.run.refresh_from_db()
    return job
