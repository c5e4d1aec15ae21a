"""Batched generation for evaluations. No Django here.

Prompts are chat message lists rendered with the tokenizer's chat template. Generation is batched with
left padding (so every row's next token sits in the last column) and the KV cache on, greedy by
default and seeded, so the same inputs give the same outputs. Prompts are grouped by length before
batching (less padding, fewer wasted steps) and results come back in the caller's order.

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
        sampling = {"temperature": config.temperature, "top_p": config.top_p} if config.do_sample else {}
        began = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **batch, max_new_tokens=config.max_new_tokens, do_sample=config.do_sample, use_cache=True,
                pad_token_id=tokenizer.pad_token_id, **sampling,
            )
        elapsed_ms = (time.perf_counter() - began) * 1000
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        batch_results = []
        for i, tokens in zip(indices, new, strict=True):
            cut = next((k for k, t in enumerate(tokens) if t in eos), len(tokens))
            kept = tokens[:cut]
            result = GenerationResult(
                text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
                prompt_tokens=len(encoded[i]), output_tokens=len(kept), latency_ms=round(elapsed_ms, 1),
            )
            results[i] = result
            batch_results.append(result)
        if on_batch is not None:
            on_batch(list(indices), batch_results)
    return [r for r in results if r is not None]
