"""Batched generation for evaluations. No Django here.

Prompts are chat message lists rendered with the tokenizer's chat template. Generation is batched with
left padding (so every row's next token sits in the last column) and the KV cache on, greedy by
default and seeded, so the same inputs give the same outputs. Prompts are grouped by length before
batching (less padding) and results come back in the caller's order.

The decoder is the engine's (``worker.runner.BatchRunner``), the same one the inference process serves
the API with: batching is continuous (a row that reached its stop token leaves the batch and its KV
cache, and the next prompt takes its place at the next step). Positions follow ``generate``'s rule
(count of real tokens before each one), so greedy outputs are the ones ``model.generate`` gives;
``tests/test_worker_generate.py`` checks them against one-at-a-time generation.

Models and adapters are loaded by ``worker.models.load_generator`` (a LoRA adapter with plain
``PeftModel.from_pretrained``), prompts rendered by ``worker.models.render_prompt``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from worker.models import render_prompt
from worker.protocol import SamplingParams
from worker.runner import BatchRunner, Request

Messages = list[dict]


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    batch_size: int = 16
    do_sample: bool = False  # greedy by default
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    max_input_tokens: int = 1536  # longer prompts are cut from the left (the end of the conversation is kept)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    output_tokens: int
    latency_ms: float  # wall time of the batch that produced this output


def generate(
    model,
    tokenizer,
    prompts: Sequence[Messages],
    config: GenerationConfig | None = None,
    *,
    on_batch: Callable[[list[int], list[GenerationResult]], None] | None = None,
) -> list[GenerationResult]:
    """Generate one output per prompt through the engine, at most ``config.batch_size`` rows at a time;
    results in input order.

    Batching is continuous: when a row finishes, the next prompt takes its place at the next step.
    ``on_batch(indices, results)`` is called with the prompts that finished at each step (the caller
    saves them and reports progress); every prompt is reported exactly once.
    """
    config = config or GenerationConfig()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [render_prompt(tokenizer, list(m)) for m in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][-config.max_input_tokens :] for t in texts]
    # Length grouping: rows admitted together pad less; a stable sort keeps ties in input order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    runner = BatchRunner(model, tokenizer, max_batch=config.batch_size)
    params = SamplingParams(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature if config.do_sample else 0.0,
        top_p=config.top_p,
        seed=config.seed,
    )
    requests = {}
    for i in order:
        requests[i] = Request(prompt_ids=encoded[i], params=params, index=i)
        runner.add(requests[i])
    results: list[GenerationResult | None] = [None] * len(encoded)
    while runner.busy:
        finished = runner.step()
        done = []
        for r in finished:
            elapsed_ms = ((r.finished_at or time.perf_counter()) - r.submitted_at) * 1000
            results[r.index] = GenerationResult(
                text=tokenizer.decode(r.output_ids, skip_special_tokens=True).strip(),
                prompt_tokens=len(r.prompt_ids),
                output_tokens=len(r.output_ids),
                latency_ms=round(elapsed_ms, 1),
            )
            done.append(r.index)
        if done and on_batch is not None:
            on_batch(done, [results[i] for i in done])
    return [r for r in results if r is not None]
