"""Quality checks over a project's examples and the near-duplicate groups splits rely on. No database here.

Near-duplicates: MinHash signatures of word 3-gram shingles (``datasketch.MinHash.bulk``), candidate
pairs from ``MinHashLSH`` buckets, each candidate checked against its bucket's first member with the
estimated Jaccard similarity, and connected components (``scipy.sparse.csgraph``) as groups. Every
bucket is walked once, so the cost grows with the number of examples, not with the number of pairs.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from .importers import content_hash, normalize_text

NEAR_DUPLICATE_THRESHOLD = 0.8
NUM_PERM = 64
SHORT_OUTPUT_CHARS = 10
MAX_EXAMPLES_PER_FINDING = 50

_WORD = re.compile(r"\w+", re.UNICODE)
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}[\s.-]\d{3,4}[\s.-]?\d{3,4}(?!\w)")
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


@dataclass
class Item:
    id: int
    messages: list[dict]
    split: str = ""
    token_count: int = 0

    @property
    def output(self) -> str:
        """The final assistant turn's text, with its tool calls written as ``name(arguments)``."""
        for m in reversed(self.messages):
            if m["role"] == "assistant":
                calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in m.get("tool_calls") or []]
                return "\n".join(part for part in [m["content"], *calls] if part)
        return ""

    @property
    def input_text(self) -> str:
        last = max((i for i, m in enumerate(self.messages) if m["role"] == "assistant"), default=len(self.messages))
        return "\n".join(m["content"] for m in self.messages[:last] if m["role"] != "system")

    @property
    def full_text(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] != "system")


@dataclass
class Finding:
    kind: str
    detail: str
    example_ids: list[int]
    severity: str = "warn"
    hashes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        blob = self.kind + "|" + "|".join(sorted(self.hashes))
        return hashlib.sha256(blob.encode()).hexdigest()


def shingles(text: str, n: int = 3) -> set[bytes]:
    """Word n-grams, lower-cased (punctuation and spacing ignored)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words).encode()} if words else {b""}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


def minhash_signatures(shingle_sets: list[set[bytes]], chunk: int = 4000) -> np.ndarray:
    """datasketch's MinHash signatures (same permutations, same arithmetic as ``MinHash.update_batch``) for many
    sets at once: one numpy pass per chunk of sets instead of one Python object per set. Shingles are hashed
    with crc32, which is deterministic across processes (splits depend on it) and cheaper than sha1."""
    from datasketch import MinHash
    from datasketch.minhash import _max_hash, _mersenne_prime

    a, b = MinHash(num_perm=NUM_PERM, seed=1).permutations
    out = np.empty((len(shingle_sets), NUM_PERM), dtype=np.uint64)
    crc32 = zlib.crc32
    for start in range(0, len(shingle_sets), chunk):
        sets = shingle_sets[start : start + chunk]
        sizes = np.fromiter((len(s) for s in sets), dtype=np.int64, count=len(sets))
        hv = np.fromiter((crc32(x) for s in sets for x in s), dtype=np.uint64, count=int(sizes.sum()))
        phv = ((hv[:, None] * a + b) % _mersenne_prime) & _max_hash
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        out[start : start + len(sets)] = np.minimum.reduceat(phv, offsets, axis=0)
    return out


def near_duplicate_pairs(
    shingle_sets: list[set[bytes]], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> list[tuple[int, int]]:
    """Index pairs (i, j) whose shingle sets' estimated Jaccard similarity is at least ``threshold``."""
    from datasketch import LeanMinHash, MinHashLSH

    if len(shingle_sets) < 2:
        return []
    values = minhash_signatures(shingle_sets)
    signatures = [LeanMinHash(seed=1, hashvalues=row) for row in values]
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    with lsh.insertion_session(buffer_size=len(shingle_sets)) as session:
        for i, sig in enumerate(signatures):
            session.insert(i, sig, check_duplication=False)
    pairs = set()
    for table in lsh.hashtables:
        for bucket_key in table.keys():
            members = table.get(bucket_key)
            if len(members) < 2:
                continue
            members = sorted(members)
            first = members[0]
            others = np.array(members[1:])
            similarity = (values[others] == values[first]).mean(axis=1)
            pairs.update((first, int(j)) for j in others[similarity >= threshold])
    return sorted(pairs)


def without_near_neighbour(
    references: list[set[bytes]], queries: list[set[bytes]], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> np.ndarray:
    """For each query shingle set, True when it shares no LSH band with any reference set: the same signatures as
    ``near_duplicate_pairs`` and datasketch's bands and rows for ``threshold`` (``MinHashLSH(threshold).b, .r``),
    looked up for all queries at once (each band of a signature folded into one number, ``np.isin`` per band)."""
    from datasketch import MinHashLSH

    lonely = np.ones(len(queries), dtype=bool)
    if not references or not queries:
        return lonely
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    ref_values, query_values = minhash_signatures(references), minhash_signatures(queries)
    weights = np.array([(0x9E3779B97F4A7C15 * (k + 1)) & 0xFFFFFFFFFFFFFFFF for k in range(lsh.r)], dtype=np.uint64)
    for band in range(lsh.b):
        cols = slice(band * lsh.r, (band + 1) * lsh.r)
        with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the point
            ref_keys = (ref_values[:, cols] * weights).sum(axis=1, dtype=np.uint64)
            query_keys = (query_values[:, cols] * weights).sum(axis=1, dtype=np.uint64)
        lonely &= ~np.isin(query_keys, ref_keys)
    return lonely


def groups_from_pairs(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Connected components: a group label per index."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = list(pairs)
    if not pairs:
        return np.arange(n)
    rows, cols = zip(*pairs, strict=True)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def similarity_groups(items: list[Item]) -> tuple[np.ndarray, list[tuple[int, int]], list[tuple[int, int]]]:
    """Groups of examples that must stay together: same input, near-same input or near-same conversation.

    Returns (group label per item, near-duplicate input pairs, near-duplicate conversation pairs).
    """
    inputs = [shingles(i.input_text) for i in items]
    full = [shingle_set | shingles(i.output) for shingle_set, i in zip(inputs, items, strict=True)]
    input_pairs = near_duplicate_pairs(inputs)
    full_pairs = near_duplicate_pairs(full)
    same_input: dict[str, int] = {}
    exact_pairs = []
    for index, item in enumerate(items):
        key = normalize_text(item.input_text)
        if key in same_input:
            exact_pairs.append((same_input[key], index))
        else:
            same_input[key] = index
    return groups_from_pairs(len(items), input_pairs + full_pairs + exact_pairs), input_pairs, full_pairs


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def personal_data(text: str) -> list[str]:
    """Kinds of personal data found in a text: email, phone number, card number (Luhn-checked)."""
    found = []
    if "@" in text and EMAIL.search(text):
        found.append("an email address")
    cards = [m for m in CARD.findall(text) if _luhn_ok(re.sub(r"\D", "", m))]
    if cards:
        found.append("a card number")
    if any(not any(m in c for c in cards) for m in PHONE.findall(text)):
        found.append("a phone number")
    return found


def redact(text: str) -> str:
    """The text with what ``personal_data`` finds masked: [email], [card number], [phone number]."""
    text = EMAIL.sub("[email]", text)
    text = CARD.sub(lambda m: "[card number]" if _luhn_ok(re.sub(r"\D", "", m.group())) else m.group(), text)
    return PHONE.sub("[phone number]", text)


def _groups(labels: np.ndarray, members: Iterable[int] | None = None) -> list[list[int]]:
    by_label: dict[int, list[int]] = defaultdict(list)
    for index in members if members is not None else range(len(labels)):
        by_label[int(labels[index])].append(index)
    return [g for g in by_label.values() if len(g) > 1]


class Findings:
    """The findings of one pass over ``items``, each naming its examples by id (at most MAX_EXAMPLES_PER_FINDING)
    and keyed by the content hashes of all of them (a dismissal holds until one of them changes)."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.hashes = [content_hash(i.messages) for i in items]
        self.found: list[Finding] = []

    def add(self, kind: str, detail: str, indexes: list[int], severity: str = "warn") -> None:
        indexes = sorted(indexes, key=lambda k: self.items[k].id)
        self.found.append(
            Finding(
                kind,
                detail,
                [self.items[k].id for k in indexes[:MAX_EXAMPLES_PER_FINDING]],
                severity,
                [self.hashes[k] for k in indexes],
            )
        )


def check_exact_duplicates(f: Findings) -> None:
    by_hash: dict[str, list[int]] = defaultdict(list)
    for index, h in enumerate(f.hashes):
        by_hash[h].append(index)
    for group in by_hash.values():
        if len(group) > 1:
            f.add(
                "exact_duplicate",
                f"{len(group)} examples are identical: keep one, delete or reject the rest.",
                group,
                "bad",
            )


def check_near_duplicates(f: Findings, full_pairs: list[tuple[int, int]]) -> None:
    for group in _groups(groups_from_pairs(len(f.items), full_pairs)):
        if len({f.hashes[k] for k in group}) > 1:
            f.add(
                "near_duplicate",
                f"{len(group)} examples are near-duplicates (≥{NEAR_DUPLICATE_THRESHOLD:.0%} similar): "
                "they add little and can leak between splits.",
                group,
            )


def check_conflicts(f: Findings, input_pairs: list[tuple[int, int]]) -> None:
    """The same or a near-same input with different ideal outputs."""
    same_input = groups_from_pairs(len(f.items), input_pairs + _exact_input_pairs(f.items))
    for group in _groups(same_input):
        outputs = {normalize_text(f.items[k].output) for k in group}
        if len(outputs) > 1:
            f.add(
                "conflict",
                f"{len(group)} examples give the same or a near-same input {len(outputs)} different "
                "ideal outputs: the model cannot learn which is right.",
                group,
                "bad",
            )


def check_lengths(f: Findings, *, context_length: int, model_name: str) -> None:
    """Empty and very short ideal outputs; examples over the model's context."""
    for index, item in enumerate(f.items):
        output = item.output.strip()
        if not output:
            f.add("empty_output", "The ideal output is empty.", [index], "bad")
        elif len(output) < SHORT_OUTPUT_CHARS:
            f.add("short_output", f"The ideal output is very short ({len(output)} characters): {output!r}.", [index])
        if item.token_count > context_length:
            f.add(
                "too_long",
                f"{item.token_count:,} tokens, over the {context_length:,}-token context of "
                f"{model_name}: training would cut it.",
                [index],
                "bad",
            )


def check_personal_data(f: Findings) -> None:
    for index, item in enumerate(f.items):
        kinds = personal_data("\n".join(m["content"] for m in item.messages))
        if kinds:
            f.add("personal_data", f"Contains {', '.join(kinds)}: remove or mask it before training.", [index], "bad")


def check_leakage(f: Findings, labels: np.ndarray) -> None:
    """Near-identical examples in train and in a held-out split."""
    for group in _groups(labels):
        splits = {f.items[k].split for k in group if f.items[k].split}
        if "train" in splits and splits & {"val", "test"}:
            held_out = sorted(splits - {"train"})
            f.add(
                "leakage",
                f"{len(group)} near-identical examples sit in train and in {' and '.join(held_out)}: "
                "the held-out score would reward memorizing. Put them in one split.",
                group,
                "bad",
            )


def run_checks(
    items: list[Item], *, context_length: int, model_name: str, progress: Callable[[int, str], None] | None = None
) -> list[Finding]:
    """Every check over ``items``; ``progress(percent, stage)`` is called between stages."""
    step = progress or (lambda percent, stage: None)
    f = Findings(items)
    step(5, "Exact duplicates")
    check_exact_duplicates(f)
    step(10, "Near-duplicates (MinHash)")
    labels, input_pairs, full_pairs = similarity_groups(items)
    step(60, "Near-duplicates and conflicts")
    check_near_duplicates(f, full_pairs)
    check_conflicts(f, input_pairs)
    step(75, "Empty, short and long outputs")
    check_lengths(f, context_length=context_length, model_name=model_name)
    step(85, "Personal data")
    check_personal_data(f)
    step(95, "Leakage between splits")
    check_leakage(f, labels)
    step(100, "Done")
    return f.found


def _exact_input_pairs(items: list[Item]) -> list[tuple[int, int]]:
    first: dict[str, int] = {}
    pairs = []
    for index, item in enumerate(items):
        key = normalize_text(item.input_text)
        if key in first:
            pairs.append((first[key], index))
        else:
            first[key] = index
    return pairs
