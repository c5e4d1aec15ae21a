"""The engine's KV cache: transformers' ``DynamicCache`` whose layers grow in place. No Django here.

A decode step adds one column of keys and values to every layer. transformers' ``DynamicLayer`` appends it with
``torch.cat``, a copy of each layer's whole cache at every step; :class:`GrowingLayer` keeps its keys and values
as views of buffers with spare columns, so the step writes its column in place. The batch runner
(``worker.runner``) cuts rows and columns out of these views as rows leave; :meth:`GrowingLayer.move_rows` and
:meth:`GrowingLayer.keep_rows` do it without a new buffer when they can.
"""

from __future__ import annotations

from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV_SPARE_COLUMNS = 64  # columns a batch's cache grows by at once


class GrowingLayer(DynamicLayer):
    """transformers' ``DynamicLayer`` whose keys and values are views of buffers with spare columns, so a
    decode step writes its one column in place instead of copying every layer's whole cache (``torch.cat``)
    at every step. A view the engine cut (rows left, columns dropped) keeps writing into the same buffer
    while it ends where the buffer's written part ends; anything else starts a new buffer."""

    buffers = None  # (keys, values), each [rows, heads, capacity, dim]

    @classmethod
    def holding(cls, keys, values, spare: int = KV_SPARE_COLUMNS):
        """A layer holding a copy of ``keys`` and ``values`` with ``spare`` columns to grow into."""
        layer = cls()
        layer.lazy_initialization(keys)
        layer._hold(keys, values, spare)
        return layer

    @classmethod
    def of_buffers(cls, kbuf, vbuf, length: int):
        """A layer whose first ``length`` columns of ``kbuf`` and ``vbuf`` are written (no copy)."""
        layer = cls()
        layer.lazy_initialization(kbuf)
        layer._show(kbuf, vbuf, 0, length)
        return layer

    def _hold(self, keys, values, spare: int) -> None:
        rows, heads, length, dim = keys.shape
        kbuf = keys.new_empty((rows, heads, length + spare, dim))
        vbuf = values.new_empty((rows, values.shape[1], length + spare, values.shape[-1]))
        kbuf[:, :, :length] = keys
        vbuf[:, :, :length] = values
        self._show(kbuf, vbuf, 0, length)

    def _show(self, kbuf, vbuf, first: int, end: int) -> None:
        """Hold these buffers; ``keys`` and ``values`` are their columns ``first:end``."""
        self.buffers = (kbuf, vbuf)
        self.keys, self.values = kbuf[:, :, first:end], vbuf[:, :, first:end]

    def _columns(self) -> tuple[int, int] | None:
        """(first, end) columns of ``keys`` and ``values`` in the buffers; None when they are not views of them."""
        if self.buffers is None or self.keys.dim() != 4:
            return None
        kbuf, vbuf = self.buffers
        for view, buf in ((self.keys, kbuf), (self.values, vbuf)):
            if (
                view.untyped_storage().data_ptr() != buf.untyped_storage().data_ptr()
                or view.stride() != buf.stride()
                or view.shape[0] != buf.shape[0]
            ):
                return None
        first, extra = divmod(self.keys.storage_offset() - kbuf.storage_offset(), kbuf.stride(2))
        if extra or self.values.storage_offset() - vbuf.storage_offset() != first * vbuf.stride(2):
            return None
        return first, first + self.keys.shape[2]

    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        if self.keys.numel() == 0:
            self._hold(key_states, value_states, KV_SPARE_COLUMNS)
            return self.keys, self.values
        columns = self._columns()
        new = key_states.shape[-2]
        if columns is None or columns[1] + new > self.buffers[0].shape[2]:
            self._hold(self.keys, self.values, new + KV_SPARE_COLUMNS)
            columns = (0, self.keys.shape[2])
        first, end = columns
        kbuf, vbuf = self.buffers
        kbuf[:, :, end : end + new] = key_states
        vbuf[:, :, end : end + new] = value_states
        self._show(kbuf, vbuf, first, end + new)
        return self.keys, self.values

    def move_rows(self, src, dst) -> None:
        """Rows ``dst`` take rows ``src``'s keys and values (all columns, spare ones included)."""
        if self._columns() is None:
            self._hold(self.keys, self.values, KV_SPARE_COLUMNS)
        first, end = self._columns()
        for buf in self.buffers:
            buf[dst] = buf[src]
        self._show(*self.buffers, first, end)

    def keep_rows(self, rows: int) -> None:
        """Keep the first ``rows`` rows (views of the same buffers)."""
        if self._columns() is None:
            self._hold(self.keys[:rows], self.values[:rows], KV_SPARE_COLUMNS)
            return
        first, end = self._columns()
        self._show(self.buffers[0][:rows], self.buffers[1][:rows], first, end)


def new_cache(layers=None) -> DynamicCache:
    """A ``DynamicCache`` of growing layers, empty or holding ``layers``' (keys, values)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    if layers:
        cache.layers = [GrowingLayer.holding(k, v) for k, v in layers]
    return cache
