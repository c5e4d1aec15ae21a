"""The batch runner: continuous batching over one loaded model. No Django here.

:class:`BatchRunner` holds the rows being written for one loaded model. Every :meth:`BatchRunner.step` first feeds
each running row its last token (one decode step, KV cache on), then admits waiting requests (one prefill of the
newcomers, left padded, in chunks of ``FTSTUDIO_PREFILL_CHUNK_TOKENS``) and merges their cache into the running
batch by left-padding the shorter side. A row that finished (stop token, stop string, ``max_new_tokens``, or a
cancel) leaves the batch and its cache rows at once, and columns every remaining row masks are cut. Positions are
the count of real tokens before each token (``generate``'s rule), so padding never changes what a row computes:
greedy output is the same in a batch as alone.

* Rows for different LoRA adapters of one base model share a batch through peft's ``adapter_names``
  (``"__base__"`` for the bare base model).
* Sampling draws from one ``torch.Generator`` per request, seeded by the request, so a seeded sample does not
  depend on which other requests shared the batch.
* Prompt beginnings already prefilled are reused from the prefix cache (``worker.prefixes``); the cache itself
  is ``worker.kv_cache``'s, the attention ``worker.attention``'s, the linear layers ``worker.packed``'s.

A :class:`Request` is one row: its prompt, its :class:`~worker.protocol.SamplingParams`, and what it wrote so far.
The engine (``worker.engine``) and evaluations (``worker.generate``) both drive a runner.
"""

from __future__ import annotations

import inspect
import os
import queue
import time
from dataclasses import dataclass, field

import torch
from torch.nn.functional import pad
from transformers import DynamicCache
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from worker.attention import use_gqa_sdpa
from worker.constrain import RowGrammar, mask_rows
from worker.kv_cache import KV_SPARE_COLUMNS, GrowingLayer, new_cache
from worker.packed import engine_kernels, pack_linear_weights
from worker.prefixes import MIN_PREFIX_TOKENS, PrefixCache, common_length, prefix_cache_bytes
from worker.protocol import SamplingParams

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch

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
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


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
        use_gqa_sdpa(model)
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
            request.generator = torch.Generator(device="cpu").manual_seed(int(request.params.seed))
        if request.params.grammar and request.grammar is None:
            request.grammar = RowGrammar(self.tokenizer, request.params.grammar)
        self.waiting.append(request)

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def step(self) -> list[Request]:
        """One decode step for the running rows, then admit one chunk of newcomers; returns the requests that
        finished."""
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
        positions = self.mask.sum(-1, keepdim=True)  # real tokens before the one fed now
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=-1)
        logits = self._forward([r.adapter for r in self.rows], self.last.unsqueeze(1), self.mask, positions, self.cache)
        return self._advance(logits)

    def _prefill(self, newcomers: list[Request]) -> list[Request]:
        """Prefill the newcomers (left padded) after the beginning they share with a stored prompt, and join them
        to the batch. Each row's cache is [shared beginning][padding][rest of its prompt]: padding is masked and
        positions count real tokens, so a row computes what it computes alone."""
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
            GrowingLayer.of_buffers(joined(old.keys, new.keys), joined(old.values, new.values), width)
            for old, new in zip(self.cache.layers, cache.layers, strict=True)
        ]
        self.cache = merged
        self.mask = torch.cat([pad(self.mask, (grow_old, 0)), pad(mask, (grow_new, 0))], dim=0)
        self.last = torch.cat([self.last, self.last.new_zeros(len(newcomers))])
        self.rows = self.rows + list(newcomers)

    def _choose(self, logits) -> list[int]:
        rows = self.rows[-len(logits) :] if len(logits) != len(self.rows) else self.rows
        if any(r.grammar is not None for r in rows):
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
