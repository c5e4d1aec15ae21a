"""OpenAI's fine-tuning API, files: upload, read, list and delete a file (and a job's results file)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage

from apps.runs.models import RunStatus

from .fine_tuning import Invalid, NotFound, page
from .ft_events import metrics_csv
from .models import ApiFile, FineTuningJob

FILE_PURPOSES = ("fine-tune",)
RESULTS_PREFIX = "file-results-"


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
