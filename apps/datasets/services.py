"""Curation: import and export examples, edit them with optimistic locking, assign splits, freeze
versions and run the quality report. Plain functions with keyword arguments; views, commands and
tasks call these and nothing else writes examples.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from ftstudio import csv_cells
from ftstudio.queueing import send_after_commit
from worker.data import tool_messages

from . import importers, quality
from .importers import Problem, canonical_json, content_hash, input_hash
from .models import (
    DatasetVersion,
    DatasetVersionItem,
    Example,
    ExampleRevision,
    ExampleStatus,
    FindingKind,
    ImportBatch,
    ImportJob,
    QualityDismissal,
    QualityFinding,
    QualityReport,
    ReportStatus,
    Split,
)
from .tasks import import_file_task, quality_report_task
from .tokens import get_token_counter

log = logging.getLogger(__name__)

SPLITS = (Split.TRAIN, Split.VAL, Split.TEST)


class CurationError(Exception):
    """A problem the user can fix; the message says what and how."""


class FreezeError(CurationError):
    pass


class ExportError(CurationError):
    pass


class EditConflict(CurationError):
    """Someone saved the example since this editor loaded it. Nothing was overwritten; both texts are kept."""

    def __init__(self, *, example: Example, yours: str, theirs: str, changed_by: str):
        self.example, self.yours, self.theirs, self.changed_by = example, yours, theirs, changed_by
        super().__init__(
            f"{changed_by} saved this example while you were editing it (it is now at revision {example.revision}). "
            "Your text was not saved and nothing was overwritten: both texts are shown, keep one or merge them, then "
            "save again."
        )


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


# --- editing ---------------------------------------------------------------------------------------
def _apply_change(
    *, example: Example, expected_revision: int | None, user, change: str, yours: str = "", **fields
) -> Example:
    """Save ``fields`` on the example if it is still at ``expected_revision``; keep the old state in history."""
    with transaction.atomic():
        current = Example.objects.select_for_update(of=("self",)).select_related("updated_by").get(pk=example.pk)
        if expected_revision is not None and current.revision != expected_revision:
            who = current.updated_by.username if current.updated_by else "Someone"
            raise EditConflict(example=current, yours=yours, theirs=current.ideal_output, changed_by=who)
        ExampleRevision.objects.create(
            example=current,
            revision=current.revision,
            messages=current.messages,
            status=current.status,
            split=current.split,
            changed_by=user,
            change=change[:200],
        )
        updated = Example.objects.filter(pk=current.pk, revision=current.revision).update(
            revision=F("revision") + 1, updated_by=user, updated_at=timezone.now(), **fields
        )
        if not updated:  # pragma: no cover - the row lock above makes this unreachable on PostgreSQL
            raise EditConflict(example=current, yours=yours, theirs=current.ideal_output, changed_by="Someone")
    return Example.objects.select_related("updated_by").get(pk=example.pk)


def save_ideal_output(*, example: Example, text: str, expected_revision: int, user) -> Example:
    """Replace the final assistant turn. Refused with EditConflict when the example changed since it was loaded."""
    if not text.strip():
        raise CurationError(
            "The ideal output cannot be empty: write the answer the model should give, or reject the example."
        )
    current = Example.objects.select_related("updated_by").get(pk=example.pk)
    if current.revision != expected_revision:
        who = current.updated_by.username if current.updated_by else "Someone"
        raise EditConflict(example=current, yours=text, theirs=current.ideal_output, changed_by=who)
    if text == current.ideal_output:
        return current
    messages = [dict(m) for m in current.messages]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages[last]["content"] = text
    tokens = get_token_counter().count_conversations([messages])[0]
    return _apply_change(
        example=example,
        expected_revision=expected_revision,
        user=user,
        change="edited the ideal output",
        yours=text,
        messages=messages,
        token_count=tokens,
        input_hash=input_hash(messages),
    )


def set_status(*, example: Example, status: str, user, expected_revision: int | None = None) -> Example:
    if status not in ExampleStatus.values:
        raise CurationError(f"Unknown status {status!r}: use {', '.join(ExampleStatus.values)}.")
    if status == example.status and (expected_revision is None or expected_revision == example.revision):
        return example
    return _apply_change(
        example=example,
        expected_revision=expected_revision,
        user=user,
        change=f"marked {status}",
        yours=example.ideal_output,
        status=status,
    )


def set_tags(*, example: Example, tags: list[str], user, expected_revision: int | None = None) -> Example:
    clean = sorted({t.strip().lower() for t in tags if t.strip()})
    bad = [t for t in clean if not all(ch.isalnum() or ch in "-_" for ch in t)]
    if bad:
        raise CurationError(f"Tags may only hold letters, digits, - and _ (not {', '.join(bad)}).")
    if clean == sorted(example.tags or []):
        return example
    return _apply_change(
        example=example,
        expected_revision=expected_revision,
        user=user,
        change=f"tags: {', '.join(clean) or 'none'}",
        yours=example.ideal_output,
        tags=clean,
    )


@dataclass
class EditOutcome:
    """What one autosave did: the example as it is now, whether anything was saved, and the refusal that stopped
    it (an ``EditConflict`` carrying both texts, or a ``CurationError``'s message), if any."""

    example: Example
    saved: bool = False
    conflict: EditConflict | None = None
    error: str = ""


def edit_example(
    *,
    example: Example,
    expected_revision: int,
    user,
    text: str | None = None,
    tags: list[str] | None = None,
    status: str | None = None,
) -> EditOutcome:
    """The labelling view's autosave: the ideal output, then tags, then status (each only when given), all
    against the revision the page loaded. Stops at the first refusal; what was saved before it stays saved."""
    outcome = EditOutcome(example=example)
    changes = [
        (save_ideal_output, {"text": text}) if text is not None else None,
        (set_tags, {"tags": tags}) if tags is not None else None,
        (set_status, {"status": status}) if status else None,
    ]
    try:
        for change, values in filter(None, changes):
            revision = outcome.example.revision if outcome.saved else expected_revision
            updated = change(example=outcome.example, expected_revision=revision, user=user, **values)
            outcome.saved = outcome.saved or updated.revision != outcome.example.revision
            outcome.example = updated
    except EditConflict as exc:
        outcome.conflict, outcome.example = exc, exc.example
    except CurationError as exc:
        outcome.error = str(exc)
    return outcome


def add_drafts(*, project, conversations: list[tuple[list[dict], str]], user) -> list[Example]:
    """New draft examples from conversations that did not come from a file (served answers, a teacher's), each
    with its origin ("stored completion chatcmpl-..."). Personal data is masked first (``quality.redact``): a
    draft never holds what the quality report would flag. The last assistant turn is the starting ideal."""
    rows = []
    for messages, origin in conversations:
        clean = [{"role": m["role"], "content": quality.redact(m.get("content") or "")} for m in messages]
        if not any(m["role"] == "assistant" for m in clean) or not any(m["role"] == "user" for m in clean):
            raise CurationError(f"{origin}: a draft needs a user turn and an answer.")
        rows.append(
            Example(
                project=project,
                messages=clean,
                status=ExampleStatus.DRAFT,
                origin=origin[:200],
                content_hash=content_hash(clean),
                input_hash=input_hash(clean),
                updated_by=user,
            )
        )
    return Example.objects.bulk_create(rows)


# --- splits ----------------------------------------------------------------------------------------
def _items(project, **filters) -> list[quality.Item]:
    rows = (
        Example.objects.filter(project=project, **filters)
        .order_by("id")
        .values_list("id", "messages", "split", "token_count")
    )
    return [quality.Item(pk, messages, split, tokens) for pk, messages, split, tokens in rows.iterator(chunk_size=5000)]


def assign_splits(
    *, project, seed: int = 0, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), reassign: bool = False
) -> dict[str, int]:
    """Assign train/val/test by ratio, deterministically for a given seed and set of examples.

    Near-duplicates (same or near-same input, or near-same conversation) form one group and go to one
    split, so nothing in val/test has a twin in train. Without ``reassign`` examples that already
    have a split keep it (frozen versions and evaluations stay comparable) and new members of their
    group join them. Returns the number of examples per split.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not sum(ratios) > 0:
        raise CurationError("Split ratios must be three non-negative numbers (train, val, test), e.g. 80/10/10.")
    total = float(sum(ratios))
    items = _items(project)
    if not items:
        return {s.value: 0 for s in SPLITS}
    labels, _, _ = quality.similarity_groups(items)
    current = {i: ("" if reassign else item.split) for i, item in enumerate(items)}
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(int(label), []).append(index)
    targets = {s.value: len(items) * r / total for s, r in zip(SPLITS, ratios, strict=True)}
    counts = Counter(v for v in current.values() if v)
    new: dict[int, str] = {}
    pending = []
    for members in groups.values():
        held = Counter(current[k] for k in members if current[k])
        if held:
            split = held.most_common(1)[0][0]
            for k in members:
                if not current[k]:
                    new[k] = split
                    counts[split] += 1
        else:
            pending.append(members)
    # Stable order independent of database ids, then a seeded shuffle.
    pending.sort(key=lambda members: min(content_hash(items[k].messages) for k in members))
    random.Random(seed).shuffle(pending)
    for members in pending:
        split = max(targets, key=lambda s: (targets[s] - counts[s]) / max(targets[s], 1e-9) if targets[s] else -1e9)
        for k in members:
            new[k] = split
        counts[split] += len(members)
    by_split: dict[str, list[int]] = {}
    for k, split in new.items():
        if items[k].split != split:
            by_split.setdefault(split, []).append(items[k].id)
    with transaction.atomic():
        for split, ids in by_split.items():
            for start in range(0, len(ids), 5000):
                Example.objects.filter(project=project, id__in=ids[start : start + 5000]).update(split=split)
    return {s.value: counts[s.value] for s in SPLITS}


# --- versions --------------------------------------------------------------------------------------
def _token_stats(counts: list[int]) -> dict:
    if not counts:
        return {"count": 0, "total": 0, "mean": 0, "p50": 0, "p95": 0, "max": 0}
    arr = np.asarray(counts)
    return {
        "count": len(counts),
        "total": int(arr.sum()),
        "mean": round(float(arr.mean()), 1),
        "p50": int(np.percentile(arr, 50)),
        "p95": int(np.percentile(arr, 95)),
        "max": int(arr.max()),
    }


@dataclass(frozen=True)
class FrozenItem:
    """One example as a version holds it."""

    split: str
    example_id: int | None
    messages: list
    content_hash: str
    tokens: int | None  # None: not known (the version's token stats leave that split out)
    tools: list = field(default_factory=list)


def _version_hash(items: list[FrozenItem]) -> str:
    return hashlib.sha256("\n".join(f"{i.split}:{i.content_hash}" for i in items).encode()).hexdigest()


def _save_version(
    *, project_id: int, items: list[FrozenItem], note: str, user, derived_from: DatasetVersion | None = None
) -> DatasetVersion:
    """Write a new numbered version holding ``items`` in order (every freeze ends here). Two freezes at once
    race for the next number: the loser takes the one after."""
    split_counts = {s.value: 0 for s in SPLITS}
    tokens: dict[str, list[int]] = {s.value: [] for s in SPLITS}
    for item in items:
        split_counts[item.split] += 1
        if item.tokens is not None:
            tokens[item.split].append(item.tokens)
    stats = {s: _token_stats(c) for s, c in tokens.items() if len(c) == split_counts[s]}  # where every count is known
    for attempt in range(3):
        try:
            with transaction.atomic():
                number = (DatasetVersion.objects.filter(project=project_id).aggregate(n=Max("number"))["n"] or 0) + 1
                version = DatasetVersion.objects.create(
                    project_id=project_id,
                    number=number,
                    content_hash=_version_hash(items),
                    note=note[:200],
                    created_by=user if getattr(user, "pk", None) else None,
                    derived_from=derived_from,
                    split_counts=split_counts,
                    token_stats=stats,
                )
                DatasetVersionItem.objects.bulk_create(
                    [
                        DatasetVersionItem(
                            version=version,
                            example_id=item.example_id,
                            position=position,
                            split=item.split,
                            messages=item.messages,
                            tools=item.tools,
                            content_hash=item.content_hash,
                        )
                        for position, item in enumerate(items)
                    ],
                    batch_size=2000,
                )
            return version
        except IntegrityError:  # another freeze took the number: take the next one
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def freeze_version(*, project, user=None, note: str = "") -> DatasetVersion:
    """Freeze the approved examples into an immutable, numbered snapshot.

    Refused (FreezeError) when no example is approved, when an approved example has no split (assign
    splits first: a version is always fully split) or when the train split would be empty. Drafts and
    rejected examples are left out.
    """
    approved = list(
        Example.objects.filter(project=project, status=ExampleStatus.APPROVED)
        .order_by("id")
        .values_list("id", "messages", "split", "token_count", "tools")
    )
    if not approved:
        raise FreezeError("No approved examples to freeze: approve examples in the labelling view first.")
    unsplit = [pk for pk, _, split, _, _ in approved if not split]
    if unsplit:
        shown = ", ".join(f"#{pk}" for pk in unsplit[:5])
        raise FreezeError(
            f"{len(unsplit)} approved example{'s have' if len(unsplit) > 1 else ' has'} no split ({shown}"
            f"{'…' if len(unsplit) > 5 else ''}): assign splits first."
        )
    order = {s.value: i for i, s in enumerate(SPLITS)}
    approved.sort(key=lambda row: (order[row[2]], row[0]))
    if not any(split == Split.TRAIN for _, _, split, _, _ in approved):
        raise FreezeError("The train split has no approved examples: a version needs something to train on.")
    items = [
        FrozenItem(split, pk, messages, content_hash(messages, tools), n, tools)
        for pk, messages, split, n, tools in approved
    ]
    latest = DatasetVersion.objects.filter(project=project, derived_from=None).order_by("-number").first()
    if latest and latest.content_hash == _version_hash(items):
        raise FreezeError(f"Nothing changed since v{latest.number}: it already holds exactly these examples.")
    return _save_version(project_id=project.pk, items=items, note=note, user=user)


def freeze_selection(
    *, project, splits: dict[str, list[int]], user=None, note: str = "", keep_val_overlap: bool = False
) -> DatasetVersion:
    """Freeze exactly these examples (ids per split, in order) into a new version, whatever their status: what a
    fine-tuning job sent through /v1/ trains on. An id in two splits stays in the first (train before val before
    test), so nothing evaluated has a twin in train; with ``keep_val_overlap`` an id in train and val stays in both
    (OpenAI keeps a validation file's lines whatever the training file holds). Raises FreezeError when train is
    empty."""
    wanted: list[tuple[str, int]] = []
    seen: set[int] = set()
    for split in SPLITS:
        in_split: set[int] = set()
        for pk in splits.get(split.value, []):
            twin = pk in seen and not (keep_val_overlap and split == Split.VAL and pk not in in_split)
            if not twin:
                seen.add(pk)
                in_split.add(pk)
                wanted.append((split.value, pk))
    rows = {
        pk: (messages, n, tools)
        for pk, messages, n, tools in Example.objects.filter(project=project, pk__in=seen).values_list(
            "id", "messages", "token_count", "tools"
        )
    }
    items = [
        FrozenItem(split, pk, rows[pk][0], content_hash(rows[pk][0], rows[pk][2]), rows[pk][1], rows[pk][2])
        for split, pk in wanted
        if pk in rows
    ]
    if not any(item.split == Split.TRAIN for item in items):
        raise FreezeError("The training file holds no examples: a version needs something to train on.")
    return _save_version(project_id=project.pk, items=items, note=note, user=user)


def freeze_subset(
    *,
    source: DatasetVersion,
    train_positions: list[int],
    test_items: list[DatasetVersionItem] | None = None,
    user=None,
    note: str = "",
) -> DatasetVersion:
    """Freeze part of a frozen version as a new version derived from it (``derived_from``): the train items at
    these positions, the source's validation split, and its test split or ``test_items`` (another version's
    test split, so that two experiment arms are scored on the same examples). Copies the frozen items, never the
    live examples: later edits do not leak in. The same subset frozen before is reused, not frozen twice.
    Raises FreezeError when the train selection is empty."""
    frozen = list(source.items.order_by("position"))
    wanted = set(train_positions)
    train = [i for i in frozen if i.split == Split.TRAIN and i.position in wanted]
    if not train:
        raise FreezeError(f"The subset of v{source.number} holds no training examples.")
    val = [i for i in frozen if i.split == Split.VAL]
    test = list(test_items) if test_items is not None else [i for i in frozen if i.split == Split.TEST]
    chosen = (
        [(Split.TRAIN.value, i) for i in train]
        + [(Split.VAL.value, i) for i in val]
        + [(Split.TEST.value, i) for i in test]
    )
    counts = dict(
        Example.objects.filter(pk__in=[i.example_id for _, i in chosen if i.example_id]).values_list(
            "id", "token_count"
        )
    )
    items = [
        FrozenItem(split, i.example_id, i.messages, i.content_hash, counts.get(i.example_id), i.tools)
        for split, i in chosen
    ]
    earlier = DatasetVersion.objects.filter(
        project=source.project_id, derived_from=source, content_hash=_version_hash(items)
    ).first()
    if earlier:
        return earlier
    return _save_version(project_id=source.project_id, items=items, note=note, user=user, derived_from=source)


def freeze_inputs(*, source: DatasetVersion, conversations: list[list[dict]], user=None, note: str = ""):
    """Freeze questions asked outside the data (a sample of served traffic) as a test-only version derived from
    ``source``, the version the model that answered them was trained on: something to evaluate on, not new data
    (``derived_from``: never offered for training, never "the newest version")."""
    if not conversations:
        raise FreezeError("No questions to freeze.")
    items = [FrozenItem(Split.TEST.value, None, m, content_hash(m, []), None) for m in conversations]
    return _save_version(project_id=source.project_id, items=items, note=note, user=user, derived_from=source)


# --- quality report --------------------------------------------------------------------------------
def start_quality_report(*, project, user=None) -> QualityReport:
    """Queue a report (Celery task `datasets.quality_report`, queue `default`) unless one is already running."""
    active = QualityReport.objects.filter(
        project=project, status__in=[ReportStatus.QUEUED, ReportStatus.RUNNING]
    ).first()
    if active:
        return active
    report = QualityReport.objects.create(project=project, created_by=user)
    send_after_commit(quality_report_task, report.pk)
    return report


def run_quality_report(*, project, report: QualityReport | None = None) -> QualityReport:
    """Run every check over the project's examples and store the findings (dismissed ones stay dismissed)."""
    report = report or QualityReport.objects.create(project=project)
    started = time.perf_counter()
    report.mark_running()

    def progress(percent: int, stage: str) -> None:
        report.note_progress(percent, stage)

    items = _items(project)
    counter = get_token_counter()
    found = quality.run_checks(
        items, context_length=counter.context_length, model_name=counter.model_name, progress=progress
    )
    dismissed = set(QualityDismissal.objects.filter(project=project).values_list("key", flat=True))
    with transaction.atomic():
        report.findings.all().delete()
        rows = [
            QualityFinding(
                report=report,
                kind=f.kind,
                severity=f.severity,
                detail=f.detail[:500],
                key=f.key,
                dismissed=f.key in dismissed,
            )
            for f in found
        ]
        QualityFinding.objects.bulk_create(rows, batch_size=2000)
        through = QualityFinding.examples.through
        through.objects.bulk_create(
            [
                through(qualityfinding_id=row.pk, example_id=pk)
                for row, f in zip(rows, found, strict=True)
                for pk in f.example_ids
            ],
            batch_size=5000,
        )
        summary = Counter(f.kind for f, row in zip(found, rows, strict=True) if not row.dismissed)
        report.mark_done(
            example_count=len(items),
            summary={k: summary.get(k, 0) for k in FindingKind.values},
            seconds=round(time.perf_counter() - started, 2),
        )
    report.refresh_from_db()
    return report


def dismiss_finding(*, finding: QualityFinding, user) -> QualityFinding:
    """Mark a finding as not a problem; it stays dismissed in later reports until its examples change."""
    project = finding.report.project
    with transaction.atomic():
        QualityDismissal.objects.get_or_create(
            project=project, key=finding.key, defaults={"kind": finding.kind, "dismissed_by": user}
        )
        QualityFinding.objects.filter(report__project=project, key=finding.key).update(dismissed=True)
        report = finding.report
        summary = dict(report.summary)
        if not finding.dismissed and summary.get(finding.kind):
            summary[finding.kind] -= 1
            QualityReport.objects.filter(pk=report.pk).update(summary=summary)
    finding.refresh_from_db()
    return finding
