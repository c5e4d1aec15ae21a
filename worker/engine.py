"""The generation engine: base models kept loaded, an LRU of LoRA adapters, one loop. No Django here.

:class:`Engine` is the long-lived service behind the inference process (``worker.serve``): base models stay
loaded (``worker.models.load_generator``), adapters live in an LRU of peft adapters on each base model, and one
background thread steps every model that has work (a ``worker.runner.BatchRunner`` per base model). Requests are
admitted or refused up front (:class:`~worker.protocol.EngineError` carries an HTTP status and an OpenAI error
code): paths outside the process's roots, a prompt that cannot fit the context, a full queue, a key over its
limit, a busy adapter LRU, an output format that cannot be enforced.

Evaluations (``worker.generate``) drive a ``BatchRunner`` directly; the import direction is
generate -> engine/runner -> models.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.chat_format import tool_format
from worker.constrain import GrammarError
from worker.models import load_generator, render_prompt
from worker.protocol import EngineError, SamplingParams, adapter_problem
from worker.runner import BatchRunner, Request

log = logging.getLogger(__name__)


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
