"""Datasets: train/val/test splits and frozen versions (a person's, a selection's, an experiment's subsets)."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from django.db import IntegrityError, transaction
from django.db.models import Max

from . import quality
from .importers import content_hash
from .models import (
    DatasetVersion,
    DatasetVersionItem,
    Example,
    ExampleStatus,
    Split,
)
from .services import SPLITS, CurationError, FreezeError, _items


# --- splits ----------------------------------------------------------------------------------------
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
