"""Datasets: importing files of examples (in the request or as a background job) and exporting them."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from ftstudio import csv_cells
from ftstudio.queueing import send_after_commit
from worker.data import tool_messages

from . import importers
from .importers import Problem, canonical_json, content_hash, input_hash
from .models import (
    DatasetVersion,
    Example,
    ExampleStatus,
    ImportBatch,
    ImportJob,
    ReportStatus,
)
from .services import CurationError, ExportError
from .tasks import import_file_task
from .tokens import get_token_counter

log = logging.getLogger(__name__)


# --- import ----------------------------------------------------------------------------------------
@dataclass
class ImportReport:
    file_format: str = ""
    imported: int = 0
    skipped_duplicates: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    batch: ImportBatch | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error_count(self) -> int:
        return len(self.errors)


def import_limits() -> importers.Limits:
    return importers.Limits(
        max_line_bytes=settings.FTSTUDIO_IMPORT_MAX_LINE_BYTES,
        max_message_chars=settings.FTSTUDIO_IMPORT_MAX_MESSAGE_CHARS,
    )


@contextmanager
def _open(path_or_file) -> Iterator[tuple[IO[bytes], str, int | None]]:
    """A seekable binary stream over the input, its name and its size when known (never read whole)."""
    if isinstance(path_or_file, str | Path):
        path = Path(path_or_file)
        with path.open("rb") as stream:
            yield stream, path.name, path.stat().st_size
        return
    stream = path_or_file
    name = getattr(path_or_file, "name", "") or ""
    if hasattr(path_or_file, "open") and hasattr(path_or_file, "chunks"):  # a Django UploadedFile
        path_or_file.open("rb")
    sample = stream.read(0)
    if isinstance(sample, str):  # a text stream: tests and scripts; small by nature
        stream = io.BytesIO(stream.read().encode())
    size = getattr(path_or_file, "size", None)
    if size is None and stream.seekable():
        start = stream.tell()
        size = stream.seek(0, io.SEEK_END) - start
        stream.seek(start)
    yield stream, name, size


PREFERENCE_FILES = "preference"  # an ImportJob of this format holds preference pairs (``preferences.py``)
IMPORT_CHUNK_ROWS = 2000  # rows tokenized and inserted at a time: bounds memory whatever the file's size


def import_examples(
    *,
    project,
    path_or_file: str | Path | IO,
    file_format: str = "auto",
    user=None,
    filename: str | None = None,
    max_tokens: int | None = None,
    progress: Callable[[int, str], None] | None = None,
    on_commit_rows: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Validate a whole file, then import it in one transaction; a file with any error imports nothing.

    The file is read as a stream twice, one line at a time: first to validate every line (limits on a
    line's bytes, a message's characters and nesting depth; see ``importers.Limits``), count tokens and
    find duplicates, keeping only a hash and a count per row; then, if nothing was wrong, to insert the
    rows in chunks inside one transaction. Memory stays bounded by a chunk of rows, not the file.

    Returns an ImportReport: counts, warnings (too many tokens for the base model, ignored keys) and
    every error with its line number. Examples already in the project (same content hash) are skipped.
    ``progress(percent, stage)`` is called as the file is read; ``on_commit_rows(report)`` runs inside
    the import's transaction (a background job marks itself done there, atomically with the rows).
    """
    started = time.perf_counter()
    limit = settings.FTSTUDIO_MAX_UPLOAD_BYTES
    try:
        with _open(path_or_file) as (stream, name, size):
            if size is not None and size > limit:
                raise CurationError(f"The file is {size:,} bytes; the limit is {limit:,}.")
            filename = filename or Path(name).name or "upload"
            report = _import_stream(
                project=project,
                stream=stream,
                size=size,
                file_format=file_format,
                user=user,
                filename=filename,
                max_tokens=max_tokens,
                progress=progress or (lambda p, s: None),
                on_commit_rows=on_commit_rows,
            )
    except (CurationError, OSError) as exc:
        return ImportReport(file_format=file_format, errors=[Problem(0, str(exc))])
    report.seconds = time.perf_counter() - started
    return report


def _chunks(rows: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _import_stream(
    *,
    project,
    stream: IO[bytes],
    size: int | None,
    file_format: str,
    user,
    filename: str,
    max_tokens: int | None,
    progress: Callable[[int, str], None],
    on_commit_rows: Callable[[ImportReport], None] | None,
) -> ImportReport:
    limits = import_limits()
    upload_limit = settings.FTSTUDIO_MAX_UPLOAD_BYTES
    start = stream.tell()

    def percent(low: int, high: int) -> int:
        done = stream.tell() - start
        if done > upload_limit:
            raise CurationError(f"The file is over the {upload_limit:,}-byte limit.")
        return low + int((high - low) * min(1.0, done / size)) if size else low

    # Pass 1: validate every line and count tokens. Keeps one token count per row, nothing else.
    parsed = importers.Parsed(file_format)
    counter = get_token_counter()
    token_limit = max_tokens or counter.context_length
    counts = array("q")
    too_long: list[tuple[int, int]] = []
    progress(1, "Checking every line")
    for chunk in _chunks(importers.parse_stream(stream, parsed, filename=filename, limits=limits), IMPORT_CHUNK_ROWS):
        if parsed.errors:  # the file will import nothing: keep reading only to report every problem
            continue
        # tools and tool calls counted as a template without tool support writes them (worker.data.tool_messages)
        conversations = [tool_messages(r.messages, r.tools, knows_tools=False) for r in chunk]
        for row, n in zip(chunk, counter.count_conversations(conversations), strict=True):
            counts.append(n)
            if n > token_limit:
                too_long.append((row.line, n))
        progress(percent(1, 50), f"Checked {len(counts):,} examples")
    report = ImportReport(file_format=parsed.file_format, errors=parsed.errors, warnings=parsed.warnings())
    if report.errors:
        return report
    if too_long:
        shown = ", ".join(f"line {line}: {n:,} tokens" for line, n in too_long[:10])
        more = f" and {len(too_long) - 10} more" if len(too_long) > 10 else ""
        report.warnings.insert(
            0,
            f"{len(too_long)} example{'s' if len(too_long) > 1 else ''} over the {token_limit:,}-token "
            f"context of {counter.model_name} ({shown}{more}); training would cut them",
        )

    # Pass 2: read the (unchanged) stream again; skip rows already in the project, insert the others chunk by
    # chunk, all in one transaction. A change to the file between the passes rolls everything back.
    stream.seek(start)
    again = importers.Parsed(parsed.file_format)
    existing = set(Example.objects.filter(project=project).values_list("content_hash", flat=True))
    progress(50, f"Saving {len(counts):,} examples (shown when all are saved)")
    changed = CurationError("The file changed while it was being imported; nothing was imported.")
    with transaction.atomic():
        report.batch = ImportBatch.objects.create(
            project=project,
            filename=filename[:255],
            file_format=parsed.file_format,
            created_by=user,
            warnings=report.warnings[:50],
        )
        position = 0
        for chunk in _chunks(
            importers.parse_stream(stream, again, filename=filename, limits=limits), IMPORT_CHUNK_ROWS
        ):
            if again.errors or position + len(chunk) > len(counts):
                raise changed
            new = []
            for row in chunk:
                blob = canonical_json(row.messages)
                h = content_hash(row.messages, row.tools) if row.tools else hashlib.sha256(blob.encode()).hexdigest()
                if h in existing:
                    report.skipped_duplicates += 1
                else:
                    existing.add(h)
                    new.append((row, blob, h, counts[position]))
                position += 1
            _insert_examples(project=project, batch=report.batch, user=user, new=new)
            report.imported += len(new)
            percent(50, 99)  # enforces the size limit; progress inside the transaction would be invisible
        if position != len(counts) or again.errors:
            raise changed
        ImportBatch.objects.filter(pk=report.batch.pk).update(
            imported_count=report.imported, skipped_duplicates=report.skipped_duplicates
        )
        report.batch.imported_count, report.batch.skipped_duplicates = report.imported, report.skipped_duplicates
        if on_commit_rows is not None:
            on_commit_rows(report)
    return report


class AlreadyImported(Exception):
    """Another delivery of the same import job committed first: this one rolls back."""


def start_import_job(*, project, upload, file_format: str = "auto", user=None) -> ImportJob:
    """Store a large upload and queue its import (task ``datasets.import_file``); the page polls the job."""
    name = default_storage.save(f"imports/{project.pk}/{uuid.uuid4().hex}.upload", upload)
    job = ImportJob.objects.create(
        project=project,
        filename=Path(upload.name or "upload").name[:255],
        file_format=file_format,
        upload=name,
        size=upload.size or 0,
        created_by=user,
    )
    send_after_commit(import_file_task, job.pk)
    return job


IMPORT_ATTEMPTS = 3


def resend_queued_imports(now=None) -> list[int]:
    """Import jobs still queued after FTSTUDIO_REQUEUE_AFTER_SECONDS (their message was lost), and running ones with
    no sign of life for FTSTUDIO_HEARTBEAT_STALE_SECONDS (their worker died): send them again (the task imports a
    job once, whatever the deliveries); a job whose worker stopped IMPORT_ATTEMPTS times fails. Called by the
    periodic reaper."""
    now = now or timezone.now()
    bound = now - timedelta(seconds=settings.FTSTUDIO_REQUEUE_AFTER_SECONDS)
    resent = list(
        ImportJob.objects.filter(status=ReportStatus.QUEUED, created_at__lt=bound).values_list("pk", flat=True)
    )
    for pk in resent:
        log.warning("Import job %s: queued since before %s with no worker: sending it again", pk, bound)
        send_after_commit(import_file_task, pk)
    stale = now - timedelta(seconds=settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS)
    running = ImportJob.objects.filter(status=ReportStatus.RUNNING)
    silent = running.filter(Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale))
    for job in silent:
        if job.attempts >= IMPORT_ATTEMPTS:
            job.mark_failed(f"The worker stopped {job.attempts} times; import the file again", only_running=True)
            continue
        log.warning("Import job %s: no sign of its worker since %s: sending it again", job.pk, job.heartbeat_at)
        job.note_resent(now)
        send_after_commit(import_file_task, job.pk)
        resent.append(job.pk)
    return resent


def run_import_job(*, job: ImportJob) -> ImportJob:
    """Import a stored upload (safe to run twice: the rows and the job's "done" commit together)."""
    job.mark_running()

    def progress(percent: int, stage: str) -> None:
        job.note_progress(percent, stage)

    def finish(report: ImportReport) -> None:
        if ImportJob.objects.select_for_update().get(pk=job.pk).status == ReportStatus.DONE:
            raise AlreadyImported
        _record(job, report)

    try:
        with default_storage.open(job.upload, "rb") as stream:
            given = {"project": job.project, "path_or_file": stream, "user": job.created_by, "filename": job.filename}
            if job.file_format == PREFERENCE_FILES:
                from .preferences import import_preference_pairs  # it builds on this module: imported when used

                report = import_preference_pairs(**given, progress=progress, on_commit_rows=finish)
            else:
                report = import_examples(**given, file_format=job.file_format, progress=progress, on_commit_rows=finish)
    except AlreadyImported:
        return ImportJob.objects.get(pk=job.pk)
    if report.errors:
        _record(job, report)
    default_storage.delete(job.upload)
    return ImportJob.objects.get(pk=job.pk)


def _record(job: ImportJob, report: ImportReport) -> None:
    job.mark_done(
        file_format=report.file_format,
        errors=[str(e) for e in report.errors[:1000]],
        error_count=len(report.errors),
        warnings=report.warnings[:50],
        imported=report.imported,
        skipped_duplicates=report.skipped_duplicates,
        batch=report.batch,
    )


def _insert_examples(*, project, batch: ImportBatch, user, new: list) -> None:
    """Insert validated rows straight through the driver: ``COPY`` on PostgreSQL, ``executemany`` elsewhere.

    ``bulk_create`` spends most of a 100k-row import preparing values field by field and, on SQLite, is
    capped at ~70 rows per statement by the bound-parameter limit; the values here are already clean
    (validated messages, hashes), so they go to the database as they are.
    """
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    columns = [
        "project_id",
        "messages",
        "status",
        "split",
        "tags",
        "metadata",
        "tools",
        "origin",
        "source_id",
        "content_hash",
        "input_hash",
        "revision",
        "token_count",
        "updated_by_id",
        "created_at",
        "updated_at",
    ]
    sql = (
        f"INSERT INTO {connection.ops.quote_name(Example._meta.db_table)} "
        f"({', '.join(connection.ops.quote_name(c) for c in columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    )
    user_id = getattr(user, "pk", None)
    dumps = json.dumps
    values = [
        (
            project.pk,
            blob,
            ExampleStatus.DRAFT,
            "",
            dumps(row.tags),
            dumps(row.metadata),
            dumps(row.tools),
            "",  # origin: a file's examples come from their import batch
            batch.pk,
            h,
            input_hash(row.messages),
            1,
            n,
            user_id,
            now,
            now,
        )
        for row, blob, h, n in new
    ]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # COPY: one round trip for the whole file
            copy_sql = sql.split(" VALUES ")[0].replace("INSERT INTO", "COPY", 1) + " FROM STDIN"
            with cursor.cursor.copy(copy_sql) as copy:
                for value in values:
                    copy.write_row(value)
            return
        for start in range(0, len(values), 5000):
            cursor.executemany(sql, values[start : start + 5000])


# --- export ----------------------------------------------------------------------------------------
EXPORT_FORMATS = ("openai", "alpaca", "csv")


def _single_turn(messages: list[dict], where: str, file_format: str) -> tuple[str, str, str]:
    system = [m["content"] for m in messages if m["role"] == "system"]
    users = [m["content"] for m in messages if m["role"] == "user"]
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    if len(users) != 1 or len(assistants) != 1 or len(system) > 1:
        raise ExportError(
            f"{where} has {len(users)} user and {len(assistants)} assistant turns; {file_format} holds one "
            "input and one output per example. Export as openai to keep multi-turn conversations."
        )
    return (system[0] if system else ""), users[0], assistants[0]


def export_lines(*, project, file_format: str, version: int | None = None) -> Iterator[str]:
    """The project's examples (or a frozen version's) as lines of the chosen format."""
    if file_format not in EXPORT_FORMATS:
        raise ExportError(f"Unknown export format {file_format!r}: use openai, alpaca or csv.")
    if version is not None:
        dv = DatasetVersion.objects.filter(project=project, number=version).first()
        if dv is None:
            raise ExportError(f"{project.name} has no version {version}.")
        rows = (
            (f"v{version} item {pos}", msgs, tools)
            for pos, msgs, tools in dv.items.order_by("position")
            .values_list("position", "messages", "tools")
            .iterator(chunk_size=2000)
        )
    else:
        rows = (
            (f"Example #{pk}", msgs, tools)
            for pk, msgs, tools in Example.objects.filter(project=project)
            .order_by("id")
            .values_list("id", "messages", "tools")
            .iterator(chunk_size=2000)
        )
    if file_format == "openai":
        for _, messages, tools in rows:
            yield json.dumps({"messages": messages, **({"tools": tools} if tools else {})}, ensure_ascii=False) + "\n"
        return
    if file_format == "alpaca":
        for where, messages, _tools in rows:
            system, user, output = _single_turn(messages, where, file_format)
            record = {"instruction": user, "input": "", "output": output}
            if system:
                record["system"] = system
            yield json.dumps(record, ensure_ascii=False) + "\n"
        return
    buffer = io.StringIO()
    # RFC 4180 line ends: with "\n" alone, csv leaves a "\r" inside a cell unquoted and the file breaks
    writer = csv_cells.writer(buffer)  # cells a spreadsheet would run are quoted
    writer.writerow(["system", "input", "output"])
    for where, messages, _tools in rows:
        writer.writerow(_single_turn(messages, where, file_format))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()
