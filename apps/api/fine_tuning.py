"""OpenAI's fine-tuning API over the Studio's own objects: its errors, paging, the job status mapping, job reads.

The API's writes and reads for ``apps/api/ft_views.py`` are in ``ft_files`` (files), ``ft_jobs`` (create, validate
and launch, control), ``ft_method_jobs`` (dpo and reinforcement jobs) and ``ft_events`` (events, checkpoints,
metrics); this module holds what they share. The JSON shapes are in ``apps/api/shapes.py``. A refused request
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

from django.db.models import Q
from django.db.models.fields.json import KeyTransform

from apps.runs.models import RunStatus

from .models import FineTuningJob, JobStage


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


class _Invalid(Exception):
    def __init__(self, error: dict) -> None:
        super().__init__(error["message"])
        self.error = error


# --- jobs: read -------------------------------------------------------------------------------------------
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
