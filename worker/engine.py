"""The generation engine: continuous batching over a loaded model, an LRU of LoRA adapters. No Django here.

One decoder serves evaluations (``worker.generate.generate``), the inference process (``worker.serve``)
and the benchmarks:

* :class:`BatchRunner` holds the rows being written for one loaded model. Every :meth:`BatchRunner.step`
  first feeds each running row its last token (one decode step, KV cache on), then admits waiting
  requests (one prefill of the newcomers, left padded) and merges their cache into the running batch by
  left-padding the shorter side. A row that finished (stop token, stop string, ``max_new_tokens``, or a
  cancel) leaves the batch and its cache rows at once, and columns every remaining row masks are cut.
  Positions are the count of real tokens before each token (``generate``'s rule), so padding never
  changes what a row computes: greedy output is the same in a batch as alone.
* Rows for different LoRA adapters of one base model share a batch through peft's ``adapter_names``
  (``"__base__"`` for the bare base model).
* Sampling draws from one ``torch.Generator`` per request, seeded by the request, so a seeded sample does
  not depend on which other requests shared the batch.
* :class:`Engine` is the long-lived service: base models stay loaded, adapters live in an LRU, and a
  background thread steps every model that has work. Requests are admitted or refused up front
  (:class:`EngineError` carries an HTTP status and an OpenAI error code).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.models import load_generator, render_prompt
from worker.packed import engine_kernels, pack_linear_weights
from worker.prefixes import MIN_PREFIX_TOKENS, PrefixCache, common_length, prefix_cache_bytes
from worker.protocol import EngineError, SamplingParams, adapter_problem

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch
ENGINE_VERSION = "ftstudio-engine-2"  # in system_fingerprint: bump when the same seed may give other tokens
DEFAULT_PREFILL_CHUNK_TOKENS = 512


def prefill_chunk_tokens() -> int:
    """Token budget of one step's prefill (``FTSTUDIO_PREFILL_CHUNK_TOKENS``; 0: admit every newcomer at once)."""
    raw = os.environ.get("FTSTUDIO_PREFILL_CHUNK_TOKENS", "").strip()
    if not raw:
        return DEFAULT_PREFILL_CHUNK_TOKENS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"FTSTUDIO_PREFILL_CHUNK_TOKENS must be a whole number of tokens, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"FTSTUDIO_PREFILL_CHUNK_TOKENS must be 0 (no limit) or more, not {value}")
    return value


@dataclass(eq=False)
class Request:
    """One completion being written. Events go to ``sink`` as ``(index, "delta", text)`` and
    ``(index, "done", finish_reason)``; ``cancel()`` makes the row leave the batch at the next step."""

    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None  # peft adapter name; None: the model as loaded
    index: int = 0
    sink: queue.SimpleQueue | None = None
    client: str | None = None
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: str = ""
    sent: int = 0  # characters of ``text`` already delivered
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    cancelled: bool = False
    generator: object = None
    scope: str | None = None  # whose prompt beginnings this row may reuse (a project); None: the evaluations'
    grammar: object = None  # worker.constrain.RowGrammar when params.grammar is set
    logprobs: list = field(default_factory=list)  # one OpenAI logprobs entry per output token, when asked

    @property
    def prefix_owner(self):
        """The prefix cache's key for this row's stored beginnings: the adapter, apart per scope."""
        return self.adapter if self.scope is None else (self.adapter, self.scope)

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _emit(self, kind: str, value) -> None:
        if self.sink is not None:
            self.sink.put((self.index, kind, value))


def eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _takes_logits_to_keep(model) -> bool:
    """Only the last position's logits are needed; most causal LMs in transformers accept ``logits_to_keep``."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


GQA_SDPA = "ftstudio_sdpa"


def _sdpa_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **_):
    """transformers' ``sdpa`` attention, except that grouped-query heads go to SDPA as they are
    (``enable_gqa``) also when there is a mask. transformers copies every layer's keys and values
    ``num_heads / num_kv_heads`` times (``repeat_kv``) whenever a mask is given, which a batch with
    left padding always has: at batch 32 that copy cost more than the attention itself. Same numbers
    (SDPA repeats the heads internally); greedy outputs stay identical."""
    import torch

    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    if is_causal is None:
        is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def _use_gqa_sdpa(model) -> None:
    """Switch a model that runs transformers' ``sdpa`` attention to :func:`_sdpa_gqa_attention`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(inner.config, "_attn_implementation", None) != "sdpa":
        return  # eager, flash attention on a GPU, or already switched: left as it is
    AttentionInterface.register(GQA_SDPA, _sdpa_gqa_attention)
    AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)
    try:
        inner.set_attn_implementation(GQA_SDPA)
    except ValueError as exc:  # a model class that refuses registered attention keeps transformers' sdpa
        log.info("%s keeps transformers' sdpa attention: %s", type(inner).__name__, exc)


KV_SPARE_COLUMNS = 64  # columns a batch's cache grows by at once


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

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

    return GrowingLayer


_GROWING_LAYER = None


def new_cache(layers=None):
    """A ``DynamicCache`` of growing layers (see ``GrowingLayer``), empty or holding ``layers``' (keys, values)."""
    global _GROWING_LAYER
    from transformers import DynamicCache

    if _GROWING_LAYER is None:
        _GROWING_LAYER = _growing_layer_class()
    cache = DynamicCache()
    cache.layer_class_to_replicate = _GROWING_LAYER
    if layers:
        cache.layers = [_GROWING_LAYER.holding(k, v) for k, v in layers]
    return cache


class BatchRunner:
    """Continuous batching over one loaded model (plain or a ``PeftModel`` holding several adapters)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch: int = 32,
        named_adapters: bool = False,
        prefill_tokens: int | None = None,
        prefix_bytes: int | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch = max(1, max_batch)
        # Newcomers are prefilled in chunks of about this many (padded) tokens, one chunk per step, so running
        # rows keep decoding and the first newcomers get their first token early. 0: no limit.
        self.prefill_tokens = prefill_chunk_tokens() if prefill_tokens is None else max(0, prefill_tokens)
        self.named_adapters = named_adapters  # pass adapter_names (a PeftModel serving several adapters)
        # Keys and values of prompt beginnings already prefilled (template, system prompt, few-shot examples).
        self.prefixes = PrefixCache(prefix_cache_bytes() if prefix_bytes is None else prefix_bytes)
        self.eos = eos_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        _use_gqa_sdpa(model)
        pack_linear_weights(model)  # oneDNN kernels for the engine's forward passes on a CPU (worker/packed.py)
        self.extra = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._layers_on: bool | None = None  # LoRA layers enabled (None: unknown, set at the next step)
        self.waiting: list[Request] = []
        self.rows: list[Request] = []
        self.cache = None  # DynamicCache of the running rows
        self.mask = None  # [rows, cache columns] attention mask
        self.last = None  # [rows] token each row feeds next

    # --- public -----------------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        if not request.params.greedy and request.generator is None:
            import torch

            request.generator = torch.Generator(device="cpu").manual_seed(int(request.params.seed))
        if request.params.grammar and request.grammar is None:
            from worker.constrain import RowGrammar

            request.grammar = RowGrammar(self.tokenizer, request.params.grammar)
        self.waiting.append(request)

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def step(self) -> list[Request]:
        """One decode step for the running rows, then admit one chunk of newcomers; returns the requests that
        finished."""
        import torch

        finished: list[Request] = []
        with torch.inference_mode():  # the cache's tensors are inference tensors, changed in place
            finished += self._drop_cancelled()
            if self.rows:
                finished += self._decode()
            finished += [self._finish(r, "cancelled") for r in self.waiting if r.cancelled]
            self.waiting = [r for r in self.waiting if not r.cancelled]
            newcomers = self._admit(self.max_batch - len(self.rows))
            if newcomers:
                finished += self._prefill(newcomers)
        return finished

    def _admit(self, room: int) -> list[Request]:
        """Take the next waiting requests, in order, whose left-padded prefill stays within the token budget
        (always at least one, so a prompt longer than the budget is still served)."""
        chosen: list[Request] = []
        width = 0
        for r in self.waiting[: max(0, room)]:
            wider = max(width, len(r.prompt_ids))
            if chosen and self.prefill_tokens and wider * (len(chosen) + 1) > self.prefill_tokens:
                break
            chosen.append(r)
            width = wider
        self.waiting = self.waiting[len(chosen) :]
        return chosen

    # --- decoding ---------------------------------------------------------------------------------
    def _forward(self, adapters: list[str | None], input_ids, mask, positions, cache):
        """Logits of each row's last position; ``adapters`` names each row's adapter (None: the base model)."""

        def call(**adapters):
            with engine_kernels():
                out = self.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    **self.extra,
                    **adapters,
                )
            return out.logits[:, -1, :].float()

        if not self.named_adapters:
            return call()
        names = set(adapters)
        if len(names) > 1:  # a mixed batch: peft routes each row through its own adapter
            self._adapter_layers(on=True)
            return call(adapter_names=[a or BASE_ADAPTER for a in adapters])
        # One adapter (or none) for the whole batch: peft's plain path, without per-call hooks.
        (name,) = names
        if name is None:
            self._adapter_layers(on=False)
            return call()
        self._adapter_layers(on=True)
        if self.model.active_adapter != name:
            self.model.set_adapter(name)
        return call()

    def _adapter_layers(self, *, on: bool) -> None:
        """Switch the LoRA layers on or off only when the state changes. (peft's ``disable_adapter()`` context
        takes the model's status, a walk over every module, on each call: tens of ms per decode step.)"""
        if self._layers_on is not on:
            base = self.model.base_model
            base.enable_adapter_layers() if on else base.disable_adapter_layers()
            self._layers_on = on

    def adapters_changed(self) -> None:
        """An adapter was loaded or deleted (peft sets up its layers): switch them explicitly at the next step, and
        forget the stored prompt beginnings of adapters that are gone."""
        self._layers_on = None
        loaded = getattr(self.model, "peft_config", {})
        self.prefixes.forget(lambda owner: (owner[0] if isinstance(owner, tuple) else owner) in {None, *loaded})

    def _decode(self) -> list[Request]:
        import torch

        positions = self.mask.sum(-1, keepdim=True)  # real tokens before the one fed now
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=-1)
        logits = self._forward([r.adapter for r in self.rows], self.last.unsqueeze(1), self.mask, positions, self.cache)
        return self._advance(logits)

    def _prefill(self, newcomers: list[Request]) -> list[Request]:
        """Prefill the newcomers (left padded) after the beginning they share with a stored prompt, and join them
        to the batch. Each row's cache is [shared beginning][padding][rest of its prompt]: padding is masked and
        positions count real tokens, so a row computes what it computes alone."""
        import torch

        if not newcomers:
            return []
        shared, past = self._shared_beginning(newcomers)
        rests = [r.prompt_ids[shared:] for r in newcomers]
        width = max(len(rest) for rest in rests)
        ids = torch.full((len(newcomers), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(newcomers), width), dtype=torch.long)
        for i, rest in enumerate(rests):
            ids[i, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[i, width - len(rest) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = shared + mask.cumsum(-1) - 1
        positions.masked_fill_(mask == 0, 1)  # as generate does; padded positions are masked anyway
        mask = torch.cat([mask.new_ones((len(newcomers), shared)), mask], dim=-1)
        cache = new_cache(past)
        logits = self._forward([r.adapter for r in newcomers], ids, mask, positions, cache)
        (r, *others) = newcomers
        if not others and self.prefixes.worth_storing(r.prefix_owner, r.prompt_ids):
            # Its whole prompt may begin the next one (a system prompt, a conversation): copied only when kept.
            layers = [(la.keys.clone(), la.values.clone()) for la in cache.layers]
            self.prefixes.store(r.prefix_owner, r.prompt_ids, layers)
        self._merge(newcomers, cache, mask)
        return self._advance(logits, only=range(len(self.rows) - len(newcomers), len(self.rows)))

    def _shared_beginning(self, newcomers: list[Request]) -> tuple[int, list | None]:
        """How many first tokens every newcomer shares with a stored prompt beginning, and their keys and values
        (one row per newcomer). Rows that share a beginning nobody stored yet get it prefilled once, and stored."""
        import torch

        if not self.prefixes.max_bytes:
            return 0, None
        first = newcomers[0].prompt_ids
        limit = min(len(r.prompt_ids) for r in newcomers) - 1  # every row prefills at least its last token
        for r in newcomers[1:]:
            limit = min(limit, common_length(first, r.prompt_ids))
        if limit < MIN_PREFIX_TOKENS:
            return 0, None
        found = {}
        for owner, adapter in {r.prefix_owner: r.adapter for r in newcomers}.items():
            n, layers = self.prefixes.longest(owner, first[:limit])
            if len(newcomers) > 1 and n < limit:
                n, layers = limit, self._prefill_beginning(adapter, first[:limit], n, layers, owner)
            found[owner] = (n, layers)
        shared = min(n for n, _ in found.values())
        if shared < MIN_PREFIX_TOKENS:
            return 0, None
        self.prefixes.hits += shared * len(newcomers)
        if len(found) == 1:
            ((_, layers),) = found.values()
            rows = len(newcomers)
            return shared, [
                (k[:, :, :shared].expand(rows, -1, -1, -1), v[:, :, :shared].expand(rows, -1, -1, -1))
                for k, v in layers
            ]
        per_row = [found[r.prefix_owner][1] for r in newcomers]
        return shared, [
            (
                torch.cat([layers[i][0][:, :, :shared] for layers in per_row]),
                torch.cat([layers[i][1][:, :, :shared] for layers in per_row]),
            )
            for i in range(len(per_row[0]))
        ]

    def _prefill_beginning(self, adapter: str | None, ids: list[int], known: int, layers, owner=None) -> list:
        """Keys and values of ``ids`` for ``adapter`` (one row), going on from the first ``known`` tokens'
        ``layers``; stored in the prefix cache under ``owner`` (the rows' ``prefix_owner``)."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(layers) if layers else DynamicCache()
        tokens = torch.tensor([ids[known:]], dtype=torch.long, device=self.device)
        mask = torch.ones((1, len(ids)), dtype=torch.long, device=self.device)
        positions = torch.arange(known, len(ids), device=self.device).unsqueeze(0)
        self._forward([adapter], tokens, mask, positions, cache)
        layers = [(la.keys, la.values) for la in cache.layers]
        self.prefixes.store(adapter if owner is None else owner, ids, layers)
        return layers

    def _merge(self, newcomers: list[Request], cache, mask) -> None:
        """Append the newcomers' rows to the running batch, left-padding whichever side is shorter."""
        import torch
        from torch.nn.functional import pad

        if not self.rows:
            self.rows, self.cache, self.mask = list(newcomers), cache, mask
            self.last = torch.zeros(len(newcomers), dtype=torch.long, device=self.device)
            return
        width = max(self.mask.shape[1], mask.shape[1])
        grow_old, grow_new = width - self.mask.shape[1], width - mask.shape[1]
        rows = len(self.rows)

        def joined(old, new):
            # One allocation (with spare columns to grow into) and one copy of each side.
            out = old.new_empty((rows + new.shape[0], *old.shape[1:-2], width + KV_SPARE_COLUMNS, old.shape[-1]))
            out[:rows, :, :grow_old].zero_()
            out[rows:, :, :grow_new].zero_()
            out[:rows, :, grow_old:width] = old
            out[rows:, :, grow_new:width] = new
            return out

        merged = new_cache()
        merged.layers = [
            merged.layer_class_to_replicate.of_buffers(
                joined(old.keys, new.keys), joined(old.values, new.values), width
            )
            for old, new in zip(self.cache.layers, cache.layers, strict=True)
        ]
        self.cache = merged
        self.mask = torch.cat([pad(self.mask, (grow_old, 0)), pad(mask, (grow_new, 0))], dim=0)
        self.last = torch.cat([self.last, self.last.new_zeros(len(newcomers))])
        self.rows = self.rows + list(newcomers)

    def _choose(self, logits) -> list[int]:
        import torch
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

        rows = self.rows[-len(logits) :] if len(logits) != len(self.rows) else self.rows
        if any(r.grammar is not None for r in rows):
            from worker.constrain import mask_rows

            mask_rows(logits, [r.grammar for r in rows])
        chosen = logits.argmax(dim=-1).tolist()
        for j, r in enumerate(rows):
            if r.params.greedy:
                continue
            scores = logits[j : j + 1]
            if r.params.temperature != 1.0:
                scores = TemperatureLogitsWarper(r.params.temperature)(None, scores)
            if r.params.top_p < 1.0:
                scores = TopPLogitsWarper(r.params.top_p)(None, scores)
            probs = torch.softmax(scores, dim=-1).cpu()
            chosen[j] = int(torch.multinomial(probs, num_samples=1, generator=r.generator).item())
        return chosen

    def _advance(self, logits, only: range | None = None) -> list[Request]:
        """Record each row's chosen token; finished rows leave the batch."""
        rows = range(len(self.rows)) if only is None else only
        wanted = [k for k, j in enumerate(rows) if self.rows[j].params.logprobs]
        scores = {}  # row -> the model's log-probabilities (before any grammar), for rows that asked
        if wanted:
            import torch

            scores = dict(zip([rows[k] for k in wanted], torch.log_softmax(logits[wanted], dim=-1), strict=True))
        chosen = self._choose(logits)
        now = time.perf_counter()
        finished, leaving = [], []
        for j, token in zip(rows, chosen, strict=True):
            r = self.rows[j]
            self.last[j] = token
            if r.first_token_at is None:
                r.first_token_at = now
            reason = None
            if token in self.eos:
                reason = "stop"
            else:
                if j in scores:
                    r.logprobs.append(self._logprob_entry(scores[j], token, r))
                r.output_ids.append(token)
                if r.grammar is not None:
                    r.grammar.take(token)
                reason = self._update_text(r)
                if reason is None and r.grammar is not None and r.grammar.complete:
                    reason = "stop"
                if reason is None and len(r.output_ids) >= r.params.max_new_tokens:
                    reason = "length"
            if reason is not None:
                finished.append(self._finish(r, reason))
                leaving.append(j)
        if leaving:
            self._remove(leaving)
        return finished

    def _logprob_entry(self, scores, token: int, r: Request) -> dict:
        """OpenAI's logprobs entry of one chosen token (with ``top_logprobs`` alternatives)."""
        import torch

        def item(t: int, logprob: float) -> dict:
            text = self.tokenizer.decode([t])
            return {"token": text, "logprob": max(float(logprob), -9999.0), "bytes": list(text.encode())}

        entry = item(token, scores[token])
        top = []
        if r.params.top_logprobs:
            values, ids = torch.topk(scores, r.params.top_logprobs)
            top = [item(int(t), float(v)) for v, t in zip(values.tolist(), ids.tolist(), strict=True)]
        return {**entry, "top_logprobs": top}

    def _update_text(self, r: Request) -> str | None:
        """Decode the row's text, deliver what is safe to show; a stop string ends the row there."""
        if r.sink is None and not r.params.stop:
            return None  # nobody streams it (generate() decodes once at the end)
        text = self.tokenizer.decode(r.output_ids, skip_special_tokens=True)
        for stop in r.params.stop:
            at = text.find(stop)
            if at >= 0:
                r.text = text[:at]
                return "stop"
        r.text = text
        hold = max((len(s) - 1 for s in r.params.stop), default=0)  # a stop string may be starting
        safe = len(text) - hold
        if text.endswith("\ufffd"):  # half of a multi-byte character
            safe = min(safe, len(text) - 1)
        if safe > r.sent:
            r._emit("delta", text[r.sent : safe])
            r.sent = safe
        return None

    def _finish(self, r: Request, reason: str) -> Request:
        r.finish_reason = reason
        r.finished_at = time.perf_counter()
        if len(r.text) > r.sent and reason != "cancelled":
            r._emit("delta", r.text[r.sent :])
            r.sent = len(r.text)
        r._emit("done", reason)
        return r

    def _drop_cancelled(self) -> list[Request]:
        gone = [j for j, r in enumerate(self.rows) if r.cancelled]
        finished = [self._finish(self.rows[j], "cancelled") for j in gone]
        if gone:
            self._remove(gone)
        return finished

    def _remove(self, leaving: list[int]) -> None:
        """Rows leave the batch. Each leaving row's place takes one of the last rows that stay (one row's cache is
        copied, not the whole batch's), then the batch is cut to the rows that stay (a view, no copy)."""
        import torch

        gone = set(leaving)
        kept = len(self.rows) - len(gone)
        if not kept:
            self.rows, self.cache, self.mask, self.last = [], None, None, None
            return
        holes = [j for j in sorted(gone) if j < kept]
        movers = [j for j in range(kept, len(self.rows)) if j not in gone]
        if holes:
            src = torch.tensor(movers, device=self.device)
            dst = torch.tensor(holes, device=self.device)
            for layer in self.cache.layers:
                layer.move_rows(src, dst)
            self.mask[dst], self.last[dst] = self.mask[src], self.last[src]
            for s, d in zip(movers, holes, strict=True):
                self.rows[d] = self.rows[s]
        self.rows = self.rows[:kept]
        for layer in self.cache.layers:
            layer.keep_rows(kept)
        self.mask, self.last = self.mask[:kept], self.last[:kept]
        # Columns that every remaining row masks (padding for rows that left) are dropped.
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first > 0:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:, :], layer.values[:, :, first:, :]


# --- the long-lived service ---------------------------------------------------------------------------
@dataclass
class _Base:
    runner: BatchRunner
    tokenizer: object
    context_length: int
    adapters: OrderedDict = field(default_factory=OrderedDict)  # adapter path -> peft adapter name (LRU order)
    tokenizing: threading.Lock = field(default_factory=threading.Lock)  # request threads tokenize one at a time
    _longest_token: int = 0

    def longest_token_chars(self) -> int:
        """Characters of the vocabulary's longest token (a prompt of N characters has at least N / this tokens)."""
        if not self._longest_token:
            self._longest_token = max((len(t) for t in self.tokenizer.get_vocab()), default=1) or 1
        return self._longest_token


def _too_long(context: int, prompt: int, asked: int, bound: str = "") -> EngineError:
    return EngineError(
        f"This model's context is {context} tokens; the messages take {bound}{prompt} and "
        f"max_tokens asks for {asked} more. Shorten the messages or lower max_tokens.",
        code="context_length_exceeded",
        param="messages",
    )


def _stopping() -> EngineError:
    return EngineError("The inference engine is shutting down.", status=503, code="engine_stopped")


class Engine:
    """Keeps base models loaded and an LRU of adapters; one thread steps every model with work."""

    def __init__(
        self,
        *,
        max_batch: int = 32,
        max_adapters: int = 8,
        max_queue: int = 256,
        allowed_roots: Sequence[str] = (),
        device: str = "cpu",
    ) -> None:
        self.max_batch, self.max_adapters, self.max_queue = max_batch, max_adapters, max_queue
        self.allowed_roots = tuple(str(Path(r).resolve()) for r in allowed_roots)
        self.device = device
        self._bases: dict[str, _Base] = {}
        self._lock = threading.RLock()  # held while a step runs and while models or adapters load
        self._wake = threading.Condition(self._lock)
        self._active: dict[str | None, int] = {}  # client -> requests admitted and not finished
        # Work that touches torch (loading models and adapters, admitting requests) runs on the engine's own
        # thread: when a second thread also runs torch operations, the two OpenMP thread teams compete for the
        # cores and every decode step gets slower (22 vs 34 ms for one row of the shipped model on 2 cores).
        self._jobs: list[tuple[object, concurrent.futures.Future]] = []
        self.finished_count = 0
        self.cancelled_count = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    # --- admission ----------------------------------------------------------------------------------
    def _check_root(self, path: str, what: str) -> str:
        resolved = Path(path).resolve()
        if self.allowed_roots and not any(resolved.is_relative_to(root) for root in self.allowed_roots):
            raise EngineError(
                f"The {what} lies outside this inference process's roots.",
                status=403,
                code="forbidden_path",
                kind="permission_error",
            )
        return str(resolved)

    def check_root(self, path: str, what: str) -> str:
        """The resolved path, or EngineError 403 when it lies outside this process's roots."""
        return self._check_root(path, what)

    def _base(self, model_dir: str) -> _Base:
        if model_dir not in self._bases:
            model, tokenizer = load_generator(model_dir, device=self.device)
            config = model.config
            context = int(getattr(config, "max_position_embeddings", 0) or tokenizer.model_max_length or 2048)
            self._bases[model_dir] = _Base(BatchRunner(model, tokenizer, max_batch=self.max_batch), tokenizer, context)
        return self._bases[model_dir]

    def _adapter_name(self, base: _Base, adapter_path: str) -> str:
        """Load an adapter into the base model's PeftModel (once), evicting the least recently used."""
        if adapter_path in base.adapters:
            base.adapters.move_to_end(adapter_path)
            return base.adapters[adapter_path]
        problem = adapter_problem(adapter_path)
        if problem:
            raise EngineError(
                f"This model cannot be served: {problem}.", status=404, code="model_not_found", param="model"
            )
        name = "a" + hashlib.sha1(adapter_path.encode()).hexdigest()[:12]
        runner = base.runner
        in_use = {r.adapter for r in runner.rows + runner.waiting}
        while len(base.adapters) >= self.max_adapters:
            victim = next((p for p, n in base.adapters.items() if n not in in_use), None)
            if victim is None:
                raise EngineError(
                    "Every adapter slot is busy; try again shortly.",
                    status=429,
                    code="engine_busy",
                    kind="rate_limit_error",
                )
            runner.model.delete_adapter(base.adapters.pop(victim))
            runner.adapters_changed()
        if not runner.named_adapters:
            from peft import PeftModel

            runner.model = PeftModel.from_pretrained(runner.model, adapter_path, adapter_name=name, is_trainable=False)
            runner.named_adapters = True
        else:
            runner.model.load_adapter(adapter_path, adapter_name=name, is_trainable=False)
        runner.adapters_changed()
        runner.model.eval()
        base.adapters[adapter_path] = name
        return name

    def prompt_ids(
        self, model_dir: str, messages: list[dict], tools: list[dict] | None = None, max_tokens: int | None = None
    ) -> list[int]:
        """The prompt's token ids (with ``tools`` rendered as the model's template or family does), rendered and
        tokenized on the caller's thread (never the engine's: a long body would stall every stream). With
        ``max_tokens``: a prompt that cannot fit the context with that many new tokens is refused by its length in
        characters before it is tokenized."""
        model_dir = self._check_root(model_dir, "base model")
        base = self._on_loop(lambda: self._base(model_dir))
        text = render_prompt(base.tokenizer, messages, tools)
        if max_tokens is not None:
            at_least = len(text) // base.longest_token_chars()  # no token is longer than the vocabulary's longest
            if at_least + max_tokens > base.context_length:
                raise _too_long(base.context_length, at_least, max_tokens, "at least ")
        with base.tokenizing:
            return base.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tool_format(self, model_dir: str):
        """The tool-call form of this base model's family (worker.chat_format.FORMATS)."""
        from worker.chat_format import tool_format

        model_dir = self._check_root(model_dir, "base model")
        return tool_format(self._on_loop(lambda: self._base(model_dir)).tokenizer)

    def submit(
        self,
        *,
        model_dir: str,
        messages: list[dict],
        params: Sequence[SamplingParams],
        adapter_path: str | None = None,
        client: str | None = None,
        client_limit: int = 0,
        sink: queue.SimpleQueue | None = None,
        scope: str | None = None,
        tools: list[dict] | None = None,
    ) -> list[Request]:
        """Admit one request per ``params`` (OpenAI's ``n``) or raise EngineError; they join the batch at once,
        all of them or none. ``scope`` (the caller's project) keeps prompt beginnings apart in the prefix cache."""
        model_dir = self._check_root(model_dir, "base model")
        if adapter_path:
            adapter_path = self._check_root(adapter_path, "adapter")
        sink = sink if sink is not None else queue.SimpleQueue()
        longest = max(p.max_new_tokens for p in params)
        ids = self.prompt_ids(model_dir, messages, tools=tools, max_tokens=longest)

        def admit() -> list[Request]:
            base = self._base(model_dir)
            if client_limit and self._active.get(client, 0) + len(params) > client_limit:
                raise EngineError(
                    f"This key already has {self._active.get(client, 0)} requests running; "
                    f"the limit is {client_limit} at a time.",
                    status=429,
                    code="rate_limit_exceeded",
                    kind="rate_limit_error",
                )
            runner = base.runner
            if len(runner.rows) + len(runner.waiting) + len(params) > self.max_queue:
                raise EngineError(
                    "The inference queue is full; try again shortly.",
                    status=429,
                    code="queue_full",
                    kind="rate_limit_error",
                )
            if len(ids) + longest > base.context_length:
                raise _too_long(base.context_length, len(ids), longest)
            adapter = self._adapter_name(base, adapter_path) if adapter_path else None
            requests = [
                Request(prompt_ids=list(ids), params=p, adapter=adapter, index=i, sink=sink, client=client, scope=scope)
                for i, p in enumerate(params)
            ]
            try:
                for r in requests:
                    runner.add(r)
            except Exception as exc:  # e.g. a seed the generator refuses: no row stays behind uncounted
                runner.waiting = [w for w in runner.waiting if w not in requests]
                from worker.constrain import GrammarError

                if isinstance(exc, GrammarError):  # a schema llguidance cannot follow
                    raise EngineError(f"The output format cannot be enforced: {exc}", param="response_format") from None
                raise
            self._active[client] = self._active.get(client, 0) + len(requests)
            return requests

        return self._on_loop(admit)

    # --- the loop -----------------------------------------------------------------------------------
    def _on_loop(self, job):
        """Run ``job()`` on the engine's thread, between two steps, and return its result (or raise its error)."""
        if threading.current_thread() is self._thread:
            return job()
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._stopped:
                raise _stopping()
            self._jobs.append((job, future))
            self._wake.notify()
        return future.result()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and not self._jobs and not any(b.runner.busy for b in self._bases.values()):
                    self._wake.wait()
                if self._stopped:
                    for _, future in self._jobs:
                        future.set_exception(_stopping())
                    return
                jobs, self._jobs = self._jobs, []
                for job, future in jobs:
                    try:
                        future.set_result(job())
                    except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                        future.set_exception(exc)
                for base in list(self._bases.values()):
                    if not base.runner.busy:
                        continue
                    try:
                        finished = base.runner.step()
                    except Exception as exc:  # noqa: BLE001 - every row of the batch is told, then it is reset
                        log.exception("engine step failed")
                        finished = self._fail_all(base.runner, exc)
                    for r in finished:
                        self._active[r.client] = max(0, self._active.get(r.client, 0) - 1)
                        self.finished_count += 1
                        self.cancelled_count += r.finish_reason == "cancelled"
            time.sleep(0)  # let request threads take the lock between steps

    def _fail_all(self, runner: BatchRunner, exc: Exception) -> list[Request]:
        failed = runner.rows + runner.waiting
        runner.rows, runner.waiting, runner.cache, runner.mask, runner.last = [], [], None, None, None
        for r in failed:
            r._emit("error", f"{type(exc).__name__}: {exc}")
            r.finish_reason = "error"
        return failed

    def stats(self) -> dict:
        with self._lock:
            return {
                "models": {
                    Path(k).name: {
                        "running": len(b.runner.rows),
                        "waiting": len(b.runner.waiting),
                        "adapters": len(b.adapters),
                        "prefix_cache_tokens": b.runner.prefixes.tokens,
                        "prefix_tokens_reused": b.runner.prefixes.hits,
                    }
                    for k, b in self._bases.items()
                },
                "running": sum(len(b.runner.rows) for b in self._bases.values()),
                "waiting": sum(len(b.runner.waiting) for b in self._bases.values()),
                "finished": self.finished_count,
                "cancelled": self.cancelled_count,
            }

    def close(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=5)
