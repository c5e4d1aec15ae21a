"""Batched generation for evaluations. No Django here.

Prompts are chat message lists rendered with the tokenizer's chat template. Generation is batched with
left padding (so every row's next token sits in the last column) and the KV cache on, greedy by
default and seeded, so the same inputs give the same outputs. Prompts are grouped by length before
batching (less padding) and results come back in the caller's order.

The decode loop is ours rather than ``model.generate`` for one reason: a row that reached its stop token
leaves the batch (its KV cache rows are dropped with ``Cache.batch_select_indices``), where
``generate`` keeps computing it until the longest row finishes. Positions follow ``generate``'s rule
(cumulative sum of the attention mask), so greedy outputs are the ones ``generate`` gives;
``tests/test_worker_generate.py`` checks them against one-at-a-time ``generate``.

A LoRA adapter (the output of a fine-tuning run) is applied with plain ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def render_prompt(tokenizer, messages: Messages) -> str:
    """The text the model continues: its chat template with the assistant turn opened."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def load_generator(model_dir: str, *, adapter_path: str | None = None, device: str | None = None, dtype=None):
    """Load a base model (safetensors only) and, optionally, a LoRA adapter on top; ready for generation."""
    from worker.models import load_model, load_tokenizer

    model = load_model(model_dir, dtype=dtype, device=device)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path, is_trainable=False)
    model.eval()
    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    return model, tokenizer


def _eos_ids(model, tokenizer) -> set[int]:
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


def generate(
    model,
    tokenizer,
    prompts: Sequence[Messages],
    config: GenerationConfig | None = None,
    *,
    on_batch: Callable[[list[int], list[GenerationResult]], None] | None = None,
) -> list[GenerationResult]:
    """Generate one output per prompt, in batches of ``config.batch_size``; results in input order.

    ``on_batch(indices, results)`` is called after each batch (the caller saves them and reports progress).
    """
    import torch

    config = config or GenerationConfig()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [render_prompt(tokenizer, list(m)) for m in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][-config.max_input_tokens:] for t in texts]
    # Length grouping: batches of similar length pad less; a stable sort keeps ties in input order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    eos = _eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    results: list[GenerationResult | None] = [None] * len(encoded)
    for start in range(0, len(order), max(1, config.batch_size)):
        indices = order[start:start + config.batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, padding=True, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        torch.manual_seed(config.seed)
        began = time.perf_counter()
        new = _decode(model, batch["input_ids"], batch["attention_mask"], config, eos)
        elapsed_ms = (time.perf_counter() - began) * 1000
        batch_results = []
        for i, kept in zip(indices, new, strict=True):
            result = GenerationResult(
                text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
                prompt_tokens=len(encoded[i]), output_tokens=len(kept), latency_ms=round(elapsed_ms, 1),
            )
            results[i] = result
            batch_results.append(result)
        if on_batch is not None:
            on_batch(list(indices), batch_results)
    return [r for r in results if r is not None]


def _decode(model, input_ids, attention_mask, config: GenerationConfig, eos: set[int]) -> list[list[int]]:
    """New tokens for each row of a left-padded batch, up to (not including) its stop token.

    Rows that stopped leave the batch and their cache, so each step computes only the rows still writing.
    """
    import torch
    from transformers import DynamicCache
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList()
    if config.do_sample:
        if config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(config.top_p))
    cache = DynamicCache()
    outputs: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    rows = torch.arange(input_ids.shape[0])  # which output each live row writes to
    positions = attention_mask.long().cumsum(-1) - 1
    positions.masked_fill_(attention_mask == 0, 1)  # as generate does; padded positions are masked anyway
    step_ids = input_ids
    extra = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
    with torch.inference_mode():
        for step in range(config.max_new_tokens):
            logits = model(input_ids=step_ids, attention_mask=attention_mask, position_ids=positions,
                           past_key_values=cache, use_cache=True, **extra).logits[:, -1, :].float()
            if config.do_sample:
                scores = warpers(step_ids, logits)
                chosen = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                chosen = logits.argmax(dim=-1)
            live = []
            for j, (row, token) in enumerate(zip(rows.tolist(), chosen.tolist(), strict=True)):
                if token not in eos:
                    outputs[row].append(token)
                    live.append(j)
            if not live or step == config.max_new_tokens - 1:
                break
            if len(live) < len(rows):
                keep = torch.tensor(live)
                cache.batch_select_indices(keep)
                rows, chosen, attention_mask = rows[keep], chosen[keep], attention_mask[keep]
                positions = positions[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=-1)
            positions = positions[:, -1:] + 1
            step_ids = chosen.unsqueeze(1)
    return outputs


def _takes_logits_to_keep(model) -> bool:
    """Only the last position's logits are needed; most causal LMs in transformers accept ``logits_to_keep``."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters
