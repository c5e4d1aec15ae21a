"""OpenAI's fine-tuning API over the Studio's own objects: files, jobs (a job is a Run), events, checkpoints.

Writes and reads for ``apps/api/ft_views.py``; the JSON shapes are in ``apps/api/shapes.py``. A refused request
raises a :class:`FineTuningError` (``Invalid``, ``NotFound``, ``Conflict``: the message and the parameter at fault);
``ft_views`` maps each to its OpenAI status and error body in one place. Reads write nothing: a run launched in the
browser gets its job when it is committed (``adopt_run``, connected in ApiConfig.ready), older ones by `api.reap`.

- A file (``POST /v1/files``) is kept as uploaded; nothing is imported until a job uses it.
- ``POST /v1/fine_tuning/jobs`` starts OpenAI's ``validating_files`` step: the training (and validation) file is
  imported into the key's project with the Studio's importer (deduplicated as any import), the file's examples
  are frozen into a dataset version and a Run is launched on it, all in one transaction. A bad line leaves
  nothing behind: the job is ``failed`` with an error naming the line. Files up to FTSTUDIO_IMPORT_INLINE_BYTES
  (together) are validated in the request, as the import page does; larger ones by task
  ``api.validate_fine_tuning_job`` (queue default), the job answering ``validating_files`` meanwhile.
- The job's status is its run's (``job_status``, the one mapping); pause hands the run back at a checkpoint.
- Checkpoints: the Studio serves a run's final adapter, so a job lists one checkpoint, the final one, whose model
  id is the job's ``fine_tuned_model`` (intermediate checkpoints are kept for resuming, not served).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.db.models.fields.json import KeyTransform
from django.utils import timezone

from apps.datasets import importers
from apps.datasets import services as datasets
from apps.datasets.importers import content_hash
from apps.datasets.models import Example, PreferencePair
from apps.runs import launching
from apps.runs.models import BaseModel, ReaperBeat, Run, RunStatus
from ftstudio.queueing import send_after_commit

from . import metadata as metadata_rule
from .models import ApiFile, FineTuningJob, JobStage
from .selectors import checkpoint_model_id, checkpoint_steps, resolve_model, run_model_id
from .tasks import validate_fine_tuning_job


class FineTuningError(Exception):
    """A request the fine-tuning API refuses: ``message`` for the person, ``param`` the field at fault, ``code``
    OpenAI's error code. ``ft_views.STATUS`` gives each kind its HTTP status."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class Invalid(FineTuningError):
    """The request itself is wrong (a field, a file's content)."""


class NotFound(FineTuningError):
    """No such file, job or checkpoint in the key's project."""


class Conflict(FineTuningError):
    """The object's state forbids it now (cancel a finished job, resume one not paused)."""


FILE_PURPOSES = ("fine-tune",)
RESULTS_PREFIX = "file-results-"
JOB_FIELDS = {
    "model",
    "training_file",
    "validation_file",
    "suffix",
    "seed",
    "metadata",
    "method",
    "hyperparameters",
    "integrations",
}
HYPERPARAMETERS = {"n_epochs": "epochs", "batch_size": "batch_size", "learning_rate_multiplier": "learning_rate"}
WHOLE_HYPERPARAMETERS = {"n_epochs": (1, 50), "batch_size": (1, 256)}  # OpenAI's bounds for these integers
PRESET = "quick"
MAX_PAGE = 100


# --- files ------------------------------------------------------------------------------------------------
def create_file(*, project, user, upload, purpose: str) -> ApiFile:
    if purpose not in FILE_PURPOSES:
        raise Invalid(
            f"purpose must be 'fine-tune' (the Studio keeps fine-tuning files only); got {purpose!r}.",
            param="purpose",
        )
    if upload is None:
        raise Invalid("Send the file as the multipart field 'file'.", param="file")
    limit = settings.FTSTUDIO_MAX_UPLOAD_BYTES
    if upload.size > limit:
        raise Invalid(
            f"The file is {upload.size:,} bytes; the limit is {limit:,}.", param="file", code="file_too_large"
        )
    if not upload.size:
        raise Invalid("The file is empty.", param="file")
    record = ApiFile(
        project=project,
        created_by=user,
        filename=Path(upload.name or "upload.jsonl").name[:255],
        purpose=purpose,
        bytes=upload.size,
    )
    # Through default_storage: MEDIA_ROOT by default, the artifact bucket (<prefix>/media/) with an s3:// store, so
    # the worker that validates a job reads the file on whichever node it runs.
    record.path = default_storage.save(f"api-files/{project.pk}/{record.public_id}", upload)
    record.save()
    return record


def open_file(record: ApiFile):
    """The stored file's bytes (a binary, seekable File; close it)."""
    return default_storage.open(record.path, "rb")


@dataclass(frozen=True)
class ResultFile:
    """A job's metrics CSV, made from its run's metrics when asked for (``file-results-<job>``)."""

    public_id: str
    job: FineTuningJob
    created_at: datetime
    filename: str = "step_metrics.csv"
    purpose: str = "fine-tune-results"

    @property
    def bytes(self) -> int:
        return len(metrics_csv(self.job).encode())


def results_file_id(job: FineTuningJob) -> str:
    return RESULTS_PREFIX + job.public_id.removeprefix("ftjob-")


def get_file(project, file_id: str, *, param: str | None = None) -> ApiFile | ResultFile:
    if file_id.startswith(RESULTS_PREFIX):
        job = (
            FineTuningJob.objects.filter(
                project=project,
                public_id="ftjob-" + file_id.removeprefix(RESULTS_PREFIX),
                run__status=RunStatus.SUCCEEDED,
            )
            .select_related("run")
            .first()
        )
        if job is not None:
            return ResultFile(public_id=file_id, job=job, created_at=job.run.finished_at or job.created_at)
    else:
        record = ApiFile.objects.filter(project=project, public_id=file_id).first()
        if record is not None:
            return record
    raise NotFound(
        f"No file {file_id!r} in project {project.slug}: GET /v1/files lists this key's files.",
        param=param,
        code="file_not_found",
    )


def file_content(found: ApiFile | ResultFile) -> bytes:
    if isinstance(found, ResultFile):
        return metrics_csv(found.job).encode()
    with open_file(found) as stream:
        return stream.read()


def list_files(project, *, purpose: str = "", after: str = "", limit: int = 10000):
    files = ApiFile.objects.filter(project=project)
    if purpose:
        files = files.filter(purpose=purpose)
    return page(files, after, limit)


def delete_file(project, file_id: str) -> str:
    found = get_file(project, file_id)
    if isinstance(found, ResultFile):
        raise Invalid("A job's result file cannot be deleted: it is made from the run's metrics.")
    default_storage.delete(found.path)
    found.delete()
    return file_id


# --- pagination -------------------------------------------------------------------------------------------
def page_limit(raw: str | None, default: int = 20) -> int:
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"limit must be a whole number; got {raw!r}.", param="limit") from None
    if not 1 <= value <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}; got {value}.", param="limit")
    return value


def page(queryset, after: str, limit: int, param: str = "after") -> tuple[list, bool]:
    """Newest first; ``after`` is the public id of the last row the caller has. Returns (rows, has_more)."""
    queryset = queryset.order_by("-created_at", "-id")
    if after:
        cursor = queryset.filter(public_id=after).values_list("created_at", "id").first()
        if cursor is None:
            raise Invalid(f"after={after!r} is not an id from this list.", param=param)
        queryset = queryset.filter(Q(created_at__lt=cursor[0]) | Q(created_at=cursor[0], id__lt=cursor[1]))
    rows = list(queryset[: limit + 1])
    return rows[:limit], len(rows) > limit


# --- jobs: the one status mapping -------------------------------------------------------------------------
RUN_STATUS = {
    RunStatus.QUEUED: "queued",
    RunStatus.RUNNING: "running",
    RunStatus.SUCCEEDED: "succeeded",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "cancelled",
    RunStatus.PAUSED: "paused",
}


def job_status(job: FineTuningJob) -> str:
    """OpenAI's status of a job: its validation stage until it has a run, then the run's status."""
    if job.run is None:
        return "failed" if job.stage == JobStage.FAILED else "validating_files"
    return RUN_STATUS[job.run.status]


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
    base_lr = launching.PRESETS[PRESET]["learning_rate"]
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
    base_lr = launching.PRESETS.get(preset or PRESET, launching.PRESETS[PRESET])["learning_rate"]
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


class _Invalid(Exception):
    def __init__(self, error: dict) -> None:
        super().__init__(error["message"])
        self.error = error


def _import(job, record: ApiFile, param: str, user) -> tuple[list[int], dict]:
    with open_file(record) as stream:
        report = datasets.import_examples(
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
        for row in importers.parse_stream(stream, importers.Parsed("openai"), limits=datasets.import_limits()):
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
                version = datasets.freeze_selection(
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


# --- jobs: dpo and reinforcement ----------------------------------------------------------------------------
def _method_file_problems(job: FineTuningJob, record: ApiFile) -> tuple[int, list[str]]:
    from . import method_files

    kind = job.method["type"]
    if kind == "dpo":
        check = method_files.preference_line_errors
    else:
        needed = method_files.item_fields(job.method["reinforcement"]["grader"])

        def check(row):
            return method_files.reinforcement_line_errors(row, needed)

    with open_file(record) as stream:
        return method_files.check_lines(stream, check)


def validate_and_launch_method(job_pk: int) -> FineTuningJob | None:
    """validating_files for a dpo or reinforcement job: every line of its files checked (a problem fails the job,
    naming the line and field, and nothing is imported), then the run launched (:func:`launch_method_job`), all in
    one transaction. A job already validated is left as it is."""
    from . import method_files

    try:
        with transaction.atomic():
            job = FineTuningJob.objects.select_for_update().filter(pk=job_pk, stage=JobStage.VALIDATING).first()
            if job is None:
                return FineTuningJob.objects.filter(pk=job_pk).first()
            files, report = {}, {}
            for param in ("training_file", "validation_file"):
                file_id = getattr(job, param)
                if not file_id:
                    continue
                files[param] = ApiFile.objects.filter(project=job.project, public_id=file_id).first()
                if files[param] is None:
                    raise _Invalid(
                        {
                            "code": "file_not_found",
                            "param": param,
                            "message": f"{param} {file_id} was deleted before it was validated.",
                        }
                    )
                count, problems = _method_file_problems(job, files[param])
                if problems:
                    raise _Invalid(
                        {
                            "code": "invalid_" + param,
                            "param": param,
                            "message": f"{param} {file_id}: {method_files.summary(problems)}. Fix the file, upload it "
                            "again and create a new job; nothing was imported.",
                        }
                    )
                report[param] = {"examples": count, "already_in_project": 0}
            run = launch_method_job(job, files)
            job.mark_launched(run=run, files_report=report)
    except _Invalid as exc:
        FineTuningJob(pk=job_pk).mark_failed(exc.error)
    return jobs_with_runs().get(pk=job_pk)


def _examples_from(job, lines: list[str], label: str, param: str, user) -> list[int]:
    """Import example lines built from a job's file (OpenAI's chat format) and return their ids, in file order."""
    report = datasets.import_examples(
        project=job.project,
        path_or_file=io.BytesIO("".join(line + "\n" for line in lines).encode()),
        file_format="openai",
        user=user,
        filename=label,
    )
    if not report.ok:
        raise _Invalid(
            {
                "code": "invalid_" + param,
                "param": param,
                "message": f"{param}: {report.errors[0]}. Fix the file, upload it again and create a new job; "
                "nothing was imported.",
            }
        )
    hashes = []
    for line in lines:
        row = json.loads(line)
        hashes.append(content_hash(row["messages"], row.get("tools") or []))
    ids = dict(
        Example.objects.filter(project=job.project, content_hash__in=set(hashes)).values_list("content_hash", "id")
    )
    return [ids[h] for h in hashes if h in ids]


def _file_rows(record: ApiFile) -> list[dict]:
    with open_file(record) as stream:
        return [json.loads(raw) for raw in stream if raw.strip()]


def _freeze_examples(job, splits: dict, user, note: str):
    try:
        return datasets.freeze_selection(
            project=job.project, splits=splits, user=user, note=note, keep_val_overlap=True
        )
    except datasets.FreezeError as exc:
        raise _Invalid({"code": "invalid_training_file", "param": "training_file", "message": str(exc)}) from None


def _preference_version(job, files: dict[str, ApiFile], user):
    """A dpo job's pairs imported into the pool and frozen as exactly the file's pairs (train, and val from the
    validation file), anchored to the project's newest examples version (its test items judge the tuned model,
    and no pair may have one of their inputs); a project with no examples version gets one of the preferred
    replies, all for training."""
    from apps.datasets import preference_files, preferences
    from apps.datasets.selectors import frozen_versions

    selection, rows_of = {}, {}
    for param, split in (("training_file", "train"), ("validation_file", "val")):
        record = files.get(param)
        if record is None:
            continue
        with open_file(record) as stream:
            report = preferences.import_preference_pairs(
                project=job.project,
                path_or_file=stream,
                user=user,
                filename=f"{record.public_id} ({record.filename})",
            )
        if not report.ok:
            raise _Invalid(
                {
                    "code": "invalid_" + param,
                    "param": param,
                    "message": f"{param} {record.public_id}: {report.errors[0]}. Fix the file, upload it again and "
                    "create a new job; nothing was imported.",
                }
            )
        with open_file(record) as stream:
            parsed = preference_files.PairsParsed()
            rows_of[param] = list(preference_files.parse_pairs(stream, parsed))
        hashes = [preference_files.pair_hash(r.messages, r.tools, r.preferred, r.non_preferred) for r in rows_of[param]]
        ids = dict(
            PreferencePair.objects.filter(project=job.project, content_hash__in=set(hashes)).values_list(
                "content_hash", "id"
            )
        )
        selection[split] = [ids[h] for h in hashes if h in ids]
    anchor = frozen_versions(job.project).first()
    if anchor is None:
        lines = [
            json.dumps({"messages": [*r.messages, r.preferred], **({"tools": r.tools} if r.tools else {})})
            for r in rows_of["training_file"]
        ]
        train_ids = _examples_from(job, lines, f"preferred replies of {job.public_id}", "training_file", user)
        anchor = _freeze_examples(job, {"train": train_ids}, user, f"fine-tuning job {job.public_id}")
    try:
        return preferences.freeze_preference_version(
            project=job.project,
            dataset_version=anchor,
            user=user,
            note=f"fine-tuning job {job.public_id}",
            selection=selection,
        )
    except preferences.FreezeError as exc:
        raise _Invalid({"code": "invalid_training_file", "param": "training_file", "message": str(exc)}) from None


def _prompt_version(job, files: dict[str, ApiFile], user):
    """A reinforcement job's prompts kept as examples whose ideal output is the line's reference answer (what
    similarity graders and ``{{item.reference_answer}}`` read), frozen as a version (train, and val from the
    validation file)."""
    grader = job.method["reinforcement"]["grader"]
    from . import method_files

    others = sorted(method_files.item_fields(grader) - {"reference_answer"})
    if others:
        raise _Invalid(
            {
                "code": "invalid_request",
                "param": "method.reinforcement.grader",
                "message": f"The grader reads item field(s) {', '.join(others)}: the Studio keeps each prompt's "
                "reference_answer only. Put what the grader needs into reference_answer.",
            }
        )
    splits = {}
    for param, split in (("training_file", "train"), ("validation_file", "val")):
        record = files.get(param)
        if record is None:
            continue
        lines = []
        for number, row in enumerate(_file_rows(record), start=1):
            reference = row.get("reference_answer")
            if reference is None or reference == "":
                raise _Invalid(
                    {
                        "code": "invalid_" + param,
                        "param": param,
                        "message": f"{param} {record.public_id}: line {number}: no reference_answer; the Studio keeps "
                        "each prompt with its reference answer as an example. Nothing was imported.",
                    }
                )
            ideal = reference if isinstance(reference, str) else json.dumps(reference)
            turns = [*row["messages"], {"role": "assistant", "content": ideal}]
            lines.append(json.dumps({"messages": turns, **({"tools": row["tools"]} if row.get("tools") else {})}))
        splits[split] = _examples_from(job, lines, f"{record.public_id} ({record.filename})", param, user)
    return _freeze_examples(job, splits, user, f"fine-tuning job {job.public_id}")


def launch_method_job(job: FineTuningJob, files: dict[str, ApiFile]) -> Run:
    """Where a checked dpo or reinforcement job becomes a Run (inside the job's transaction): its files imported
    and frozen (a preference version, or a version of prompts with their reference answers), then launched by the
    runs service like a run from the browser. A refusal raises ``_Invalid`` (the job fails with its message)."""
    user, kind = job.created_by, job.method["type"]
    base = BaseModel.objects.filter(name=job.model).first()
    if base is None:
        raise _Invalid(
            {
                "code": "model_not_found",
                "param": "model",
                "message": f"The base model {job.model!r} was removed before the job started.",
            }
        )
    if kind == "dpo":
        preference_version = _preference_version(job, files, user)
        launch = {"dataset_version": preference_version.dataset_version, "preference_version": preference_version}
    else:
        grader = {**job.method["reinforcement"]["grader"]}
        grader.setdefault("name", grader.get("type", "grader"))
        launch = {"dataset_version": _prompt_version(job, files, user), "graders": [grader]}
    try:
        return launching.launch_run(
            project=job.project,
            base_model=base,
            preset=PRESET,
            overrides=job.overrides,
            user=user,
            name=job.suffix,
            method=kind,
            **launch,
        )
    except launching.LaunchError as exc:
        raise _Invalid({"code": "invalid_request", "param": None, "message": str(exc)}) from None


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


# --- jobs: read -------------------------------------------------------------------------------------------
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


def jobs_with_runs():
    return FineTuningJob.objects.select_related("project", "run", "run__base_model", "run__project")


def jobs(project):
    return jobs_with_runs().filter(project=project)


def list_jobs(project, *, after: str = "", limit: int = 20, metadata: dict | None = None):
    queryset = jobs(project)
    for i, (k, v) in enumerate((metadata or {}).items()):
        queryset = queryset.alias(**{f"_meta{i}": KeyTransform(k, "metadata")}).filter(**{f"_meta{i}": v})
    return page(queryset, after, limit)


def get_job(project, job_id: str) -> FineTuningJob:
    if job_id.startswith("ftjob-"):
        job = jobs(project).filter(public_id=job_id).first()
        if job is not None:
            return job
    raise NotFound(
        f"No fine-tuning job {job_id!r} in project {project.slug}: GET /v1/fine_tuning/jobs lists them.",
        param="fine_tuning_job_id",
        code="job_not_found",
    )


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


# --- events, checkpoints, metrics --------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    id: str
    at: datetime
    message: str
    level: str = "info"
    type: str = "message"
    data: dict | None = None


def events(job: FineTuningJob) -> list[Event]:
    """Message and metrics events, newest first: the job's stages and every metric its run logged."""
    tag = job.public_id.removeprefix("ftjob-")
    out = [Event(f"ftevent-{tag}-created", job.created_at, f"Created fine-tuning job: {job.public_id}")]
    if job.training_file:
        out.append(
            Event(
                f"ftevent-{tag}-validating",
                job.created_at,
                f"Validating training file: {job.training_file}"
                + (f" and validation file: {job.validation_file}" if job.validation_file else ""),
            )
        )
    if job.error:
        out.append(Event(f"ftevent-{tag}-invalid", job.finished_at or job.updated_at, job.error["message"], "error"))
    run = job.run
    if run is not None:
        report = job.files_report or {}
        if report:
            parts = [
                f"{name.replace('_', ' ')}: {r['examples']} examples ({r['already_in_project']} already in the project)"
                for name, r in report.items()
                if isinstance(r, dict)
            ]
            out.append(
                Event(
                    f"ftevent-{tag}-validated",
                    run.created_at,
                    "Files validated, moving job to queued state; "
                    + "; ".join(parts)
                    + f"; dataset version v{run.dataset_version.number}"
                    + (f", preference version p{run.preference_version.number}" if run.preference_version_id else ""),
                )
            )
        overlap = (report.get("validation_file") or {}).get("also_in_training_file")
        if overlap:
            out.append(
                Event(
                    f"ftevent-{tag}-overlap",
                    run.created_at,
                    f"{overlap} validation example{'s' if overlap > 1 else ''} also appear in the training file: kept "
                    "in validation, so the validation loss is partly measured on examples the model trains on",
                    "warn",
                )
            )
        if run.started_at:
            out.append(Event(f"ftevent-{tag}-started", run.started_at, "Fine-tuning job started"))
        for number, restart in enumerate(run.restarts or [], 1):
            since = f"step {restart['step']}, its last checkpoint" if restart.get("step") else "the beginning"
            out.append(
                Event(
                    f"ftevent-{tag}-restart{number}",
                    datetime.fromisoformat(restart["at"]),
                    f"Fine-tuning job restarted (attempt {restart.get('attempt')}): training goes on from {since}",
                )
            )
        for m in run.metrics.order_by("step", "id"):
            if m.train_loss is not None:
                out.append(
                    Event(
                        f"ftevent-{tag}-m{m.step}",  # by step: the same id when a resumed run logs it again
                        m.created_at,
                        f"Step {m.step}/{run.total_steps}: training loss={m.train_loss:.4f}",
                        type="metrics",
                        data={
                            "step": m.step,
                            "train_loss": m.train_loss,
                            "train_mean_token_accuracy": m.train_accuracy,
                            "total_steps": run.total_steps,
                            "learning_rate": m.learning_rate,
                            "epoch": m.epoch,
                        },
                    )
                )
            if m.val_loss is not None:
                out.append(
                    Event(
                        f"ftevent-{tag}-v{m.step}",
                        m.created_at,
                        f"Step {m.step}/{run.total_steps}: validation loss={m.val_loss:.4f}",
                        type="metrics",
                        data={
                            "step": m.step,
                            "valid_loss": m.val_loss,
                            "valid_mean_token_accuracy": m.val_accuracy,
                            "total_steps": run.total_steps,
                        },
                    )
                )
        end = run.finished_at or run.updated_at
        if run.status == RunStatus.SUCCEEDED:
            out.append(Event(f"ftevent-{tag}-model", end, f"New fine-tuned model created: {run_model_id(run)}"))
            out.append(Event(f"ftevent-{tag}-succeeded", end, "The job has successfully completed"))
        elif run.status == RunStatus.FAILED:
            out.append(Event(f"ftevent-{tag}-failed", end, f"Fine-tuning job failed: {run.error}", "error"))
        elif run.status == RunStatus.CANCELLED:
            out.append(Event(f"ftevent-{tag}-cancelled", end, "Fine-tuning job cancelled"))
        elif run.status == RunStatus.PAUSED:
            out.append(
                Event(
                    f"ftevent-{tag}-paused-{int(end.timestamp())}",
                    end,
                    f"Fine-tuning job paused at step {run.step}; resume it to go on from there",
                )
            )
    ordered = sorted(enumerate(out), key=lambda pair: (pair[1].at, pair[0]), reverse=True)
    return [e for _, e in ordered]


def slice_after(items: list, after: str, limit: int) -> tuple[list, bool]:
    start = 0
    if after:
        ids = [item.id if hasattr(item, "id") else item["id"] for item in items]
        if after in ids:
            start = ids.index(after) + 1
        elif (start := _metrics_cursor(items, after)) is None:
            raise Invalid(f"after={after!r} is not an id from this list.", param="after")
    return items[start : start + limit], len(items) > start + limit


def _metrics_cursor(items: list, after: str) -> int | None:
    """Where an event id the client saw stands when it is not in the list now: a metrics event
    (``ftevent-<job>-m<step>``) of a step a resumed run has not logged again yet (the older steps and stages follow
    it), or the pause of a job resumed since (``ftevent-<job>-paused-<time>``: the older events follow it)."""
    if not items or not isinstance(items[-1], Event) or not items[-1].id.endswith("-created"):
        return None  # not a job's events (the oldest of which is its creation)
    match = re.fullmatch(re.escape(items[-1].id.removesuffix("created")) + r"(?:[mv](\d+)|paused-(\d+))", after)
    if match is None:
        return None
    step, paused = match.groups()
    for index, event in enumerate(items):
        if paused is not None and event.at.timestamp() < int(paused):
            return index
        if step is not None and (
            (event.type == "metrics" and event.data["step"] < int(step))
            or event.id.endswith(("-started", "-validated", "-validating", "-created"))
        ):
            return index
    return len(items)


def checkpoints(job: FineTuningJob) -> list[dict]:
    """A succeeded job's checkpoints at its last three epoch ends, newest first, each a model id the inference process
    serves (the final one is the job's ``fine_tuned_model``). Metrics are those logged at the checkpoint's step;
    one not logged is left out (OpenAI's schema types them as numbers)."""
    run = job.run
    if run is None or run.status != RunStatus.SUCCEEDED:
        return []
    tag = job.public_id.removeprefix("ftjob-")
    logged: dict[int, dict] = {}
    saved: dict[int, datetime] = {}
    for m in run.metrics.filter(step__in=checkpoint_steps(run)).order_by("id"):
        saved.setdefault(m.step, m.created_at)
        row = logged.setdefault(m.step, {"step": m.step})
        if m.train_loss is not None:
            row.update(train_loss=m.train_loss, train_mean_token_accuracy=m.train_accuracy)
        if m.val_loss is not None:
            row.update(
                valid_loss=m.val_loss,
                valid_mean_token_accuracy=m.val_accuracy,
                full_valid_loss=m.val_loss,  # the Studio validates on the whole validation split
                full_valid_mean_token_accuracy=m.val_accuracy,
            )
    finished = run.finished_at or run.updated_at
    return [
        {
            "id": f"ftckpt-{tag}-{step}",
            "object": "fine_tuning.job.checkpoint",
            "created_at": int(saved.get(step, finished).timestamp()),
            "fine_tuned_model_checkpoint": checkpoint_model_id(run, step),
            "fine_tuning_job_id": job.public_id,
            "step_number": step,
            "metrics": {k: v for k, v in logged.get(step, {"step": step}).items() if v is not None},
        }
        for step in reversed(checkpoint_steps(run))
    ]


def metrics_csv(job: FineTuningJob) -> str:
    """One row per step, like OpenAI's step_metrics.csv."""
    rows: dict[int, dict] = {}
    if job.run is not None:
        for m in job.run.metrics.order_by("step", "id"):
            row = rows.setdefault(m.step, {"step": m.step})
            if m.train_loss is not None:
                row.update(
                    train_loss=m.train_loss,
                    train_accuracy=m.train_accuracy,
                    learning_rate=m.learning_rate,
                    epoch=m.epoch,
                )
            if m.val_loss is not None:
                row.update(valid_loss=m.val_loss, valid_mean_token_accuracy=m.val_accuracy)
    out = io.StringIO()
    columns = [
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
        "learning_rate",
        "epoch",
    ]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue()
