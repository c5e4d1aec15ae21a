"""Preference pairs: the draft pool (imported, harvested from reviewers' verdicts, written by designers) and the
frozen, numbered preference versions a preference run trains on. Writes only; reads are in ``selectors``.

A preference version is anchored to an examples version whose test split judges the models trained on it, so
freezing refuses any pair whose input is one of those test inputs (the same normalized input hash as
``Example.input_hash``): a model must never be trained towards the answers it is scored on.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max

from . import preference_files
from .importers import Problem, input_hash
from .importing import PREFERENCE_FILES, _chunks, _open, import_limits
from .models import (
    DatasetVersion,
    PreferenceOrigin,
    PreferencePair,
    PreferenceVersion,
    PreferenceVersionItem,
    Split,
)
from .services import CurationError, FreezeError

VAL_SHARE = 10  # one pair in VAL_SHARE goes to validation, by its hash, once the pool holds that many
PREVIEW = 80


class PreferenceError(CurationError):
    """A pair or a freeze that cannot be accepted; the message says which and why."""


# --- the pool --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairSpec:
    """A pair to add to the pool (``preferred``/``non_preferred``: one assistant message each)."""

    messages: list[dict]
    preferred: dict
    non_preferred: dict
    tools: list[dict] = field(default_factory=list)
    origin_detail: dict = field(default_factory=dict)


def _row(project, spec: PairSpec, origin: str, user) -> PreferencePair:
    row, problems = preference_files.check_pair(
        spec.messages, spec.tools, [spec.preferred], [spec.non_preferred], limits=import_limits()
    )
    if problems:
        raise PreferenceError("; ".join(problems).capitalize() + ".")
    return PreferencePair(
        project=project,
        messages=row.messages,
        tools=row.tools,
        preferred=row.preferred,
        non_preferred=row.non_preferred,
        origin=origin,
        origin_detail=spec.origin_detail,
        input_hash=preference_files.pair_input_hash(row.messages, row.preferred),
        content_hash=preference_files.pair_hash(row.messages, row.tools, row.preferred, row.non_preferred),
        created_by=user if getattr(user, "pk", None) else None,
    )


def add_pairs(*, project, specs: list[PairSpec], origin: str, user=None) -> tuple[list[PreferencePair], int]:
    """Check and add pairs to the pool; a pair already there (same content hash) is not added twice.

    Returns (the pairs created, how many were already in the pool). Raises PreferenceError, adding nothing, when
    any pair is invalid."""
    if origin not in PreferenceOrigin.values:
        raise PreferenceError(f"Unknown origin {origin!r}.")
    rows = [_row(project, spec, origin, user) for spec in specs]
    with transaction.atomic():
        existing = set(
            PreferencePair.objects.filter(project=project, content_hash__in=[r.content_hash for r in rows]).values_list(
                "content_hash", flat=True
            )
        )
        new, skipped = [], 0
        for row in rows:
            if row.content_hash in existing:
                skipped += 1
            else:
                existing.add(row.content_hash)
                new.append(row)
        for row in new:  # one at a time: a concurrent twin (unique per project and hash) is skipped, not an error
            try:
                with transaction.atomic():
                    row.save()
            except IntegrityError:
                skipped += 1
        created = [row for row in new if row.pk]
    return created, skipped


def add_pair(*, project, spec: PairSpec, origin: str, user=None) -> tuple[PreferencePair, bool]:
    """Add one pair (checked as ``add_pairs`` does); returns it, or the same pair already in the pool, and whether
    it is new."""
    created, _ = add_pairs(project=project, specs=[spec], origin=origin, user=user)
    if created:
        return created[0], True
    row = _row(project, spec, origin, user)
    return PreferencePair.objects.get(project=project, content_hash=row.content_hash), False


def set_excluded(*, pair: PreferencePair, excluded: bool) -> PreferencePair:
    """Leave a pair out of the next versions (or take it back); frozen versions keep what they hold."""
    pair.write(excluded=bool(excluded))
    pair.refresh_from_db()
    return pair


# --- import ----------------------------------------------------------------------------------------
@dataclass
class PreferenceImportReport:
    """What an import did; shaped as ``importing.ImportReport`` so a background ``ImportJob`` records either."""

    file_format: str = PREFERENCE_FILES
    batch: None = None
    imported: int = 0
    skipped_duplicates: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error_count(self) -> int:
        return len(self.errors)


IMPORT_CHUNK_ROWS = 2000


def import_preference_pairs(
    *,
    project,
    path_or_file: str | Path | IO,
    user=None,
    filename: str | None = None,
    progress: Callable[[int, str], None] | None = None,
    on_commit_rows: Callable[[PreferenceImportReport], None] | None = None,
) -> PreferenceImportReport:
    """Import a file of OpenAI's preference JSONL into the pool: every line is checked first, and a file with any
    problem imports nothing (each problem with its line number). Streamed twice, one line at a time, under the
    example importer's limits (upload size, bytes per line, characters per message, nesting). Pairs already in the
    pool (same content hash) are skipped. ``progress(percent, stage)`` and ``on_commit_rows(report)`` (inside the
    import's transaction) as for ``importing.import_examples``: a large upload is imported by the same background
    job (``importing.start_import_job`` with ``file_format=PREFERENCE_FILES``)."""
    started = time.perf_counter()
    progress = progress or (lambda percent, stage: None)
    limit = settings.FTSTUDIO_MAX_UPLOAD_BYTES
    limits = import_limits()
    try:
        with _open(path_or_file) as (stream, name, size):
            if size is not None and size > limit:
                raise CurationError(f"The file is {size:,} bytes; the limit is {limit:,}.")
            filename = filename or Path(name).name or "upload"
            start = stream.tell()
            parsed = preference_files.PairsParsed()
            total = 0
            progress(1, "Checking every line")
            for _ in preference_files.parse_pairs(stream, parsed, limits=limits):
                total += 1
                done = stream.tell() - start
                if done > limit:
                    raise CurationError(f"The file is over the {limit:,}-byte limit.")
                if size and total % IMPORT_CHUNK_ROWS == 0:
                    progress(1 + int(49 * min(1.0, done / size)), f"Checked {total:,} pairs")
            report = PreferenceImportReport(errors=parsed.errors, warnings=parsed.warnings())
            if report.errors:
                return report
            stream.seek(start)
            again = preference_files.PairsParsed()
            changed = CurationError("The file changed while it was being imported; nothing was imported.")
            existing = set(PreferencePair.objects.filter(project=project).values_list("content_hash", flat=True))
            progress(50, f"Saving {total:,} pairs (shown when all are saved)")
            seen = 0
            with transaction.atomic():
                for chunk in _chunks(preference_files.parse_pairs(stream, again, limits=limits), IMPORT_CHUNK_ROWS):
                    seen += len(chunk)
                    if again.errors or seen > total:
                        raise changed
                    new = []
                    for row in chunk:
                        h = preference_files.pair_hash(row.messages, row.tools, row.preferred, row.non_preferred)
                        if h in existing:
                            report.skipped_duplicates += 1
                            continue
                        existing.add(h)
                        new.append(
                            PreferencePair(
                                project=project,
                                messages=row.messages,
                                tools=row.tools,
                                preferred=row.preferred,
                                non_preferred=row.non_preferred,
                                origin=PreferenceOrigin.IMPORT,
                                origin_detail={"file": filename[:255], "line": row.line},
                                input_hash=preference_files.pair_input_hash(row.messages, row.preferred),
                                content_hash=h,
                                created_by=user if getattr(user, "pk", None) else None,
                            )
                        )
                    PreferencePair.objects.bulk_create(new, batch_size=1000, ignore_conflicts=True)  # a racing twin
                    report.imported += len(new)
                if seen != total or again.errors:
                    raise changed
                if on_commit_rows is not None:
                    on_commit_rows(report)
    except (CurationError, OSError) as exc:
        return PreferenceImportReport(errors=[Problem(0, str(exc))])
    report.seconds = time.perf_counter() - started
    return report


# --- export ----------------------------------------------------------------------------------------
def preference_export_lines(*, project, version: int | None = None) -> Iterator[str]:
    """A frozen preference version (``version``: its number) or the pool's pairs not left out, as OpenAI's
    preference JSONL, in a stable order (a version's positions; the pool's ids)."""
    if version is not None:
        pv = PreferenceVersion.objects.filter(project=project, number=version).first()
        if pv is None:
            raise PreferenceError(f"{project.name} has no preference version {version}.")
        rows = pv.items.order_by("position").values_list("messages", "tools", "preferred", "non_preferred")
    else:
        rows = (
            PreferencePair.objects.filter(project=project, excluded=False)
            .order_by("id")
            .values_list("messages", "tools", "preferred", "non_preferred")
        )
    yield from preference_files.write_lines(rows.iterator(chunk_size=2000))


# --- freezing --------------------------------------------------------------------------------------
def _split_for(content_hash: str, pool_size: int) -> str:
    """Validation for one pair in VAL_SHARE (by the pair's own hash, so it never moves), once the pool has that
    many pairs; train otherwise."""
    if pool_size >= VAL_SHARE and int(content_hash[:12], 16) % VAL_SHARE == 0:
        return Split.VAL.value
    return Split.TRAIN.value


def _preview(messages: list[dict]) -> str:
    asked = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    asked = " ".join(str(asked).split())
    return asked if len(asked) <= PREVIEW else asked[: PREVIEW - 1] + "…"


def test_leaks(pairs, dataset_version: DatasetVersion) -> list[tuple[PreferencePair, int]]:
    """The pairs whose input is the input of a test example of ``dataset_version``, each with that example's
    position in the version (the test items judge models trained on these pairs)."""
    tests: dict[str, int] = {}
    rows = dataset_version.items.filter(split=Split.TEST).order_by("position").values_list("position", "messages")
    for position, messages in rows.iterator(chunk_size=2000):
        tests.setdefault(input_hash(messages), position)
    return [(pair, tests[pair.input_hash]) for pair in pairs if pair.input_hash in tests]


def leak_message(leaks: list[tuple[PreferencePair, int]], dataset_version: DatasetVersion) -> str:
    shown = "; ".join(f"pair #{pair.pk} ({_preview(pair.messages)!r}) is test example {pos}" for pair, pos in leaks[:5])
    more = f"; and {len(leaks) - 5} more" if len(leaks) > 5 else ""
    return (
        f"{len(leaks)} pair{'s have' if len(leaks) > 1 else ' has'} the same input as a test example of "
        f"v{dataset_version.number}, whose test examples judge the models trained on these pairs: {shown}{more}. "
        "Leave those pairs out, or anchor the version to an examples version that does not test them."
    )


def _version_hash(items: list[tuple[str, PreferencePair]]) -> str:
    return hashlib.sha256("\n".join(f"{split}:{pair.content_hash}" for split, pair in items).encode()).hexdigest()


def freeze_preference_version(
    *, project, dataset_version: DatasetVersion, user=None, note: str = "", selection: dict | None = None
) -> PreferenceVersion:
    """Freeze the pool's pairs not left out into an immutable, numbered preference version anchored to
    ``dataset_version`` (the examples version whose test split judges the models trained on it).

    Splits are deterministic: a pair keeps the split it got when first frozen, and a new pair goes to validation
    by its hash (one in ten, once the pool has ten pairs). Items are ordered train then validation, each by content
    hash, so the same pool freezes to the same content hash. Refused (FreezeError) when the pool is empty, when any
    pair's input is one of the anchor's test inputs (the error names them), or when nothing changed since the
    latest version on the same anchor.

    ``selection`` ({"train": [pair ids], "val": [pair ids]}) freezes exactly those pairs in those splits instead of
    the pool (a fine-tuning job's files); the pool's own splits are left as they are, and a selection identical to
    the latest version on the same anchor returns that version.
    """
    if dataset_version.project_id != project.pk:
        raise FreezeError("That examples version belongs to another project.")
    if selection is not None:
        chosen = {pk: split for split in (Split.VAL, Split.TRAIN) for pk in selection.get(split.value, [])}
        pairs = list(PreferencePair.objects.filter(project=project, pk__in=chosen).order_by("content_hash", "id"))
        for pair in pairs:
            pair.split = chosen[pair.pk]
        unsplit = []
    else:
        pairs = list(PreferencePair.objects.filter(project=project, excluded=False).order_by("content_hash", "id"))
    if not pairs:
        raise FreezeError("No preference pairs to freeze: import pairs, or collect them from reviewers' verdicts.")
    leaks = test_leaks(pairs, dataset_version)
    if leaks:
        raise FreezeError(leak_message(leaks, dataset_version))
    if selection is None:
        unsplit = [p for p in pairs if p.split not in (Split.TRAIN, Split.VAL)]
        for pair in unsplit:
            pair.split = _split_for(pair.content_hash, len(pairs))
    order = {Split.TRAIN.value: 0, Split.VAL.value: 1}
    items = sorted(((p.split, p) for p in pairs), key=lambda sp: (order[sp[0]], sp[1].content_hash))
    if not any(split == Split.TRAIN for split, _ in items):
        raise FreezeError("Every pair is in the validation split: a preference version needs pairs to train on.")
    content = _version_hash(items)
    latest = PreferenceVersion.objects.filter(project=project).order_by("-number").first()
    if latest and latest.content_hash == content and latest.dataset_version_id == dataset_version.pk:
        if selection is not None:
            return latest
        raise FreezeError(f"Nothing changed since p{latest.number}: it already holds exactly these pairs.")
    split_counts = {Split.TRAIN.value: 0, Split.VAL.value: 0}
    for split, _ in items:
        split_counts[split] += 1
    for attempt in range(3):
        try:
            with transaction.atomic():
                for pair in unsplit:
                    PreferencePair.objects.filter(pk=pair.pk, split="").update(split=pair.split)
                number = (PreferenceVersion.objects.filter(project=project).aggregate(n=Max("number"))["n"] or 0) + 1
                version = PreferenceVersion.objects.create(
                    project=project,
                    number=number,
                    dataset_version=dataset_version,
                    content_hash=content,
                    note=note[:200],
                    split_counts=split_counts,
                    created_by=user if getattr(user, "pk", None) else None,
                )
                PreferenceVersionItem.objects.bulk_create(
                    [
                        PreferenceVersionItem(
                            version=version,
                            pair=pair,
                            position=position,
                            split=split,
                            messages=pair.messages,
                            tools=pair.tools,
                            preferred=pair.preferred,
                            non_preferred=pair.non_preferred,
                            content_hash=pair.content_hash,
                        )
                        for position, (split, pair) in enumerate(items)
                    ],
                    batch_size=2000,
                )
            return version
        except IntegrityError:  # another freeze took the number: take the next one
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
