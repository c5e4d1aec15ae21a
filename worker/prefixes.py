"""Prompt beginnings already prefilled, kept so the next prompt that starts the same way is prefilled from where
it differs (the engine's prefix cache; no Django here).

Requests to one model share long beginnings: the chat template and system prompt every request carries, a
prompt-only baseline's few-shot examples, the earlier turns of a conversation in the playground. Their keys and
values do not depend on what follows (attention is causal), so the keys and values of a stored prompt's first
``n`` tokens serve any prompt whose first ``n`` tokens are the same, for the same adapter.

Entries are whole prompts (or a batch's shared beginning) with their per-layer keys and values; a lookup takes
the longest common beginning with any entry of the adapter and slices it. Least recently used entries go first
once the stored keys and values pass the budget (``FTSTUDIO_PREFIX_CACHE_MB``, 256 MB by default, per loaded
model; 0 turns the cache off). For the shipped 135M model a prompt token's keys and values take 46 KB (30 layers,
3 KV heads of 64, float32), so 256 MB hold ~5,700 prompt tokens.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

DEFAULT_PREFIX_CACHE_MB = 256
MIN_PREFIX_TOKENS = 16  # shorter common beginnings are prefilled again: not worth a lookup and a copy


def prefix_cache_bytes() -> int:
    """How many bytes of keys and values the prefix cache keeps per model (``FTSTUDIO_PREFIX_CACHE_MB``; 0: off)."""
    raw = os.environ.get("FTSTUDIO_PREFIX_CACHE_MB", "").strip()
    if not raw:
        return DEFAULT_PREFIX_CACHE_MB * 2**20
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"FTSTUDIO_PREFIX_CACHE_MB must be a number of megabytes, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"FTSTUDIO_PREFIX_CACHE_MB must be 0 (off) or more, not {raw}")
    return int(value * 2**20)


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` share from the start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """Per-layer keys and values of prompt beginnings, by (adapter, tokens); LRU, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self._entries: OrderedDict[tuple[str | None, tuple[int, ...]], tuple[list, int]] = OrderedDict()
        self.bytes = 0
        self.tokens = 0
        self.hits = 0  # prompt tokens served from the cache instead of prefilled (for the benchmarks and stats)

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, adapter: str | None, ids: Sequence[int]) -> tuple[int, list | None]:
        """The longest stored beginning of ``ids`` for ``adapter``: (length, per-layer (keys, values) sliced to it)."""
        best, best_key = 0, None
        for key in self._entries:
            if key[0] == adapter:
                n = common_length(key[1], ids)
                if n > best:
                    best, best_key = n, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        layers = self._entries[best_key][0]
        if best == len(best_key[1]):
            return best, layers
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in layers]

    def worth_storing(self, adapter: str | None, ids: Sequence[int]) -> bool:
        """Whether :meth:`store` would keep ``ids``: the cache is on, ``ids`` is long enough, and no entry of the
        adapter already starts with it (that entry counts as used). Lets a caller skip copying keys and values."""
        if not self.max_bytes or len(ids) < MIN_PREFIX_TOKENS:
            return False
        ids = tuple(ids)
        covering = next((k for k in self._entries if k[0] == adapter and k[1][: len(ids)] == ids), None)
        if covering is not None:
            self._entries.move_to_end(covering)
            return False
        return True

    def store(self, adapter: str | None, ids: Sequence[int], layers: list) -> None:
        """Keep the keys and values of ``ids`` (each ``[1, heads, len(ids), dim]``, owned by the cache from now on).
        Nothing is stored when a longer entry already starts with ``ids``; entries that ``ids`` extends are dropped."""
        if not self.worth_storing(adapter, ids):
            return
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if size > self.max_bytes:
            return
        ids = tuple(ids)
        for a, stored in list(self._entries):
            if a == adapter and len(stored) < len(ids) and ids[: len(stored)] == stored:
                self._drop((a, stored))
        self._entries[(adapter, ids)] = (layers, size)
        self.bytes += size
        self.tokens += len(ids)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def forget(self, keep_adapter) -> None:
        """Drop the entries of adapters for which ``keep_adapter(name)`` is false (the base model's are kept).
        Entries kept apart per project are keyed ``(adapter, project)``: ``keep_adapter`` gets that pair."""
        for key in [k for k in self._entries if k[0] is not None and not keep_adapter(k[0])]:
            self._drop(key)

    def _drop(self, key) -> None:
        _, size = self._entries.pop(key)
        self.bytes -= size
        self.tokens -= len(key[1])
