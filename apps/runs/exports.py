"""Exports of a succeeded run: the portable adapter, the merged model, GGUF (+ Ollama Modelfile).

`export_run_to` does one export synchronously (the `export_model` command); the run page asks for one with
`request_export`, which records a `RunExport` row and queues task `runs.export_run` (queue `default`): a merge
or a GGUF conversion takes longer than a request should. The task claims the row like `claim_run` does, writes a
zip and stores it in the artifact store as ``runs/<pk>/exports/<export pk>/<name>.zip`` (MEDIA_ROOT itself when
FTSTUDIO_ARTIFACTS_URL is unset; then the zip is written in place), and marks it ready with that key in
``file_path``; a second delivery of the same message does nothing. The run page's download streams it from the
store (`open_export`), on whichever node serves the page. Rows from before the store hold an absolute path.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import transaction

from worker.artifacts import ArtifactStoreError, LocalStore
from worker.export import (
    FORMATS,
    QUANTS,
    ExportError,
    ExportResult,
    check_adapter_dir,
    export,
)

from . import artifacts, jobs
from .models import ExportStatus, Run, RunExport, RunStatus, SourceKind
from .tasks import export_run

log = logging.getLogger(__name__)


def _check_request(run: Run, fmt: str, quant: str) -> str:
    """The quantization to use; raises ExportError for a format, quantization or run that cannot be exported."""
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    if fmt == "gguf":
        quant = quant or "f16"
        if quant not in QUANTS:
            raise ExportError(f"Unknown GGUF quantization {quant!r}: choose one of {', '.join(QUANTS)}.")
    elif quant:
        raise ExportError(f"--quant applies to GGUF exports only, not to {fmt}.")
    if run.status != RunStatus.SUCCEEDED:
        raise ExportError(f"Run {run.pk} is {run.status}: only a succeeded run has an adapter to export.")
    if not artifacts.remote():  # in a shared store the adapter is on another node: fetched when the export runs
        check_adapter_dir(run.adapter_path)
    return quant


def export_run_to(*, run: Run, fmt: str, out: str | Path, quant: str = "") -> ExportResult:
    """Export a succeeded run now; raises ExportError (a message for the user) before any heavy work when it can."""
    quant = _check_request(run, fmt, quant)
    base = run.base_model
    base_dir = artifacts.base_model_dir(base) if fmt != "adapter" else ""
    source_gguf = base.source if fmt == "gguf" and base.source_kind == SourceKind.GGUF else None
    return export(
        fmt,
        base_dir=base_dir,
        adapter_dir=artifacts.local_adapter_dir(run),
        out=out,
        base_model_id=base.portable_id,
        quant=quant or "f16",
        source_gguf=source_gguf,
    )


# --- from the run page: a RunExport row and a task ------------------------------------------------------
def request_export(*, run: Run, fmt: str, quant: str = "", user=None) -> RunExport:
    """Queue an export (or return the same one already queued, running or ready: clicking twice is harmless)."""
    quant = _check_request(run, fmt, quant)
    with transaction.atomic():
        same = (
            RunExport.objects.select_for_update()
            .filter(
                run=run,
                format=fmt,
                quant=quant,
                status__in=[ExportStatus.QUEUED, ExportStatus.RUNNING, ExportStatus.SUCCEEDED],
            )
            .first()
        )
        if same is not None and (same.status != ExportStatus.SUCCEEDED or export_file_exists(same)):
            if same.status == ExportStatus.RUNNING and jobs.holder_gone("export", same.pk):
                jobs.send("export", export_run, same.pk)  # its worker died: asking again sends it again
            return same
        job = RunExport.objects.create(
            run=run, format=fmt, quant=quant, created_by=user if getattr(user, "pk", None) else None
        )
        jobs.send("export", export_run, job.pk)  # held by a lease: the reaper sends it again if its worker dies
    return job


def claim_export(export_pk: int) -> RunExport | None:
    """Claim a queued export for this delivery (or a running one whose worker died: the caller holds the export's
    lease, `jobs.held`, so no live worker has it); None when it is finished."""
    with transaction.atomic():
        job = RunExport.objects.select_for_update().filter(pk=export_pk).first()
        if job is None or job.status in {ExportStatus.SUCCEEDED, ExportStatus.FAILED}:
            return None
        job.mark_running()
        return job


def export_key(job: RunExport, name: str = "") -> str:
    return f"runs/{job.run_id}/exports/{job.pk}" + (f"/{name}" if name else "")


def _zip_name(job: RunExport) -> str:
    run = job.run
    return f"{run.project.slug}-run-{run.pk}-{job.format}{f'-{job.quant}' if job.quant else ''}.zip"


def execute_export(export_pk: int) -> str:
    """Do a claimed export: write it in a scratch folder, zip it, store the zip, record its key or the error.
    A failure (the store down after its retries included) records the error and no file: nothing half-written."""
    with jobs.held("export", export_pk) as lease:
        job = claim_export(export_pk) if lease is not None else None
        return _export_claimed(job) if job is not None else "skipped"


def _export_claimed(job: RunExport) -> str:
    job = RunExport.objects.select_related("run__project", "run__base_model").get(pk=job.pk)
    key = export_key(job, _zip_name(job))
    # Written where a local store keeps it (MEDIA_ROOT/<key>); with a remote store, a scratch copy removed once stored.
    folder = Path(settings.MEDIA_ROOT) / export_key(job)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    zip_path = folder / _zip_name(job)
    try:
        with tempfile.TemporaryDirectory(prefix="export-", dir=folder) as scratch:
            top = Path(scratch) / zip_path.stem
            result = export_run_to(run=job.run, fmt=job.format, out=top, quant=job.quant)
            written = Path(result.path) if Path(result.path).is_dir() else Path(result.path).parent
            with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:  # weights do not compress
                for path in sorted(written.rglob("*")):
                    if path.is_file():
                        archive.write(path, arcname=f"{zip_path.stem}/{path.relative_to(written)}")
        size = zip_path.stat().st_size
        try:
            artifacts.store().put_file(zip_path, key)
        except ArtifactStoreError as exc:
            raise ExportError(f"The export was made but could not be stored: {exc}. Export it again later.") from exc
        store = artifacts.store()
        if not (isinstance(store, LocalStore) and store.root / key == zip_path.resolve()):
            shutil.rmtree(folder, ignore_errors=True)  # stored elsewhere: this node keeps no copy
    except Exception as exc:  # recorded on the row; the page shows the reason
        log.exception("Export %s of run %s failed", job.pk, job.run_id)
        shutil.rmtree(folder, ignore_errors=True)
        message = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
        job.mark_failed(message)
        return ExportStatus.FAILED
    job.mark_succeeded(file_path=key, size_bytes=size)
    return ExportStatus.SUCCEEDED


def export_file_exists(job: RunExport) -> bool:
    if not job.file_path:
        return False
    if Path(job.file_path).is_absolute():  # written before exports went through the store
        return Path(job.file_path).is_file()
    try:
        return artifacts.store().file_exists(job.file_path)
    except ArtifactStoreError:
        return True  # the store is down: keep the row; its download says so


def open_export(job: RunExport) -> BinaryIO:
    """The export's bytes as a stream, from the store (or the old absolute path); raises ArtifactStoreError."""
    if Path(job.file_path).is_absolute():
        try:
            return Path(job.file_path).open("rb")
        except OSError as exc:
            raise ArtifactStoreError(f"{job.file_path} is gone") from exc
    return artifacts.store().open_file(job.file_path)


# --- reading ----------------------------------------------------------------------------------------------
def exports_for(run: Run) -> list[RunExport]:
    return list(run.exports.all()[:20])
