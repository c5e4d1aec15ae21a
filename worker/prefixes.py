"""Prompt beginnings already prefilled, kept so the next prompt that starts the same way is prefilled from where
it differs (the engine's prefix cache; no Django here).

Requests to one model share long beginnings: the chat template and system prompt every request carries, a
prompt-only baseline's few-shot examples, the earlier turns of a conversation in the playground. Their keys and
values do not depend on what follows (attention is causal), so the keys and values of a stored prompt's first
``n`` tokens serve any prompt whose first ``n`` tokens are the same, for the same adapter.

Entries are whole prompts (or a batch's shared beginning) with their per-layer keys and values; a lookup takes
the longest common beginning with any entry of the adapter and slices it. Least recently used entries go first
once the stored tokens pass the budget (``FTSTUDIO_PREFIX_CACHE_TOKENS``; 0 turns the cache off).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

DEFAULT_PREFIX_CACHE_TOKENS = 4096
MIN_PREFIX_TOKENS = 16  # shorter common beginnings are prefilled again: not worth a lookup and a copy


def prefix_cache_tokens() -> int:
    """How many prompt tokens the prefix cache keeps per model (``FTSTUDIO_PREFIX_CACHE_TOKENS``; 0: off)."""
    raw = os.environ.get("FTSTUDIO_PREFIX_CACHE_TOKENS", "").strip()
    if not raw:
        return DEFAULT_PREFIX_CACHE_TOKENS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"FTSTUDIO_PREFIX_CACHE_TOKENS must be a whole number of tokens, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"FTSTUDIO_PREFIX_CACHE_TOKENS must be 0 (off) or more, not {value}")
    return value


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` share from the start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """Per-layer keys and values of prompt beginnings, by (adapter, tokens); LRU, bounded in tokens."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max(0, max_tokens)
        self._entries: OrderedDict[tuple[str | None, tuple[int, ...]], list] = OrderedDict()
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
        layers = self._entries[best_key]
        if best == len(best_key[1]):
            return best, layers
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in layers]

    def store(self, adapter: str | None, ids: Sequence[int], layers: list) -> None:
        """Keep the keys and values of ``ids`` (each ``[1, heads, len(ids), dim]``, owned by the cache from now on).
        Nothing is stored when a longer entry already starts with ``ids``; entries that ``ids`` extends are dropped."""
        if not self.max_tokens or len(ids) < MIN_PREFIX_TOKENS or len(ids) > self.max_tokens:
            return
        ids = tuple(ids)
        for a, stored in list(self._entries):
            if a != adapter:
                continue
            if len(stored) >= len(ids) and stored[: len(ids)] == ids:
                self._entries.move_to_end((a, stored))
                return
            if len(stored) < len(ids) and ids[: len(stored)] == stored:
                self._drop((a, stored))
        self._entries[(adapter, ids)] = layers
        self.tokens += len(ids)
        while self.tokens > self.max_tokens:
            self._drop(next(iter(self._entries)))

    def forget(self, keep_adapter) -> None:
        """Drop the entries of adapters for which ``keep_adapter(name)`` is false (the base model's are kept)."""
        for key in [k for k in self._entries if k[0] is not None and not keep_adapter(k[0])]:
            self._drop(key)

    def _drop(self, key) -> None:
        del self._entries[key]
        self.tokens -= len(key[1])
