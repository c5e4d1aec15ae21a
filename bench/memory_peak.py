"""Peak memory of training against the estimate (worker/memory.py), on this machine's device.

    .venv/bin/python bench/memory_peak.py --model DIR [--steps 3] [--batch-size 8] [--max-seq-length 256]
                                          [--checkpointing] [--mode lora|qlora] [--rank 8]

Builds the run's trainer on the model (a safetensors folder), measures the worst batch the data can make (the
``batch_size`` longest examples: its tokens and labelled tokens), trains ``--steps`` steps on batches of the
longest examples, and compares the peak with the estimate for that batch. The peak is the process's resident
memory high-water mark (reset after loading, so the weights' file pages are not counted twice) on a CPU, and
``torch.cuda.max_memory_allocated`` plus the CUDA context on a GPU. Prints one JSON object; the last line is
``ratio=<measured / estimated>``. tests/test_memory_estimate.py runs it on the tiny model and the shipped one.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the resident high-water mark (VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def worst_batch(features: list[dict], batch_size: int) -> tuple[list[dict], int, int]:
    """The batch of the longest examples, its tokens and its labelled tokens (the estimate's inputs)."""
    longest = sorted(features, key=lambda f: -len(f["input_ids"]))[:batch_size]
    tokens = sum(len(f["input_ids"]) for f in longest)
    labelled = sum(sum(1 for x in f["labels"][1:] if x != -100) for f in longest)
    return longest, tokens, labelled


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--mode", default="lora", choices=("lora", "qlora"))
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--examples", type=int, default=32)
    args = parser.parse_args(argv)

    import torch
    from train_throughput import make_conversations

    from worker.memory import Shape, estimate_memory
    from worker.train import TrainConfig, build_trainer

    torch.manual_seed(0)
    conversations = make_conversations(args.examples)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model_dir=args.model,
            output_dir=out,
            max_steps=args.steps,
            batch_size=args.batch_size,
            max_seq_length=args.max_seq_length,
            lora_r=args.rank,
            memory_mode=args.mode,
            gradient_checkpointing=args.checkpointing,
            save_steps=10_000,
        )
        trainer, _tok, features, _val = build_trainer(config, conversations, [])
        device = trainer.args.device.type
        batch, tokens, labelled = worst_batch(features, args.batch_size)
        trainer.train_dataset = batch * args.steps  # every step trains the worst batch
        trainer.args.max_steps = args.steps
        shape = Shape.from_config(json.loads((Path(args.model) / "config.json").read_text()))
        estimate = estimate_memory(
            shape,
            mode=args.mode,
            device=device,
            lora_r=args.rank,
            target_modules=config.target_modules,
            lora_dropout=config.lora_dropout,
            batch_tokens=tokens,
            labelled_tokens=labelled,
            gradient_checkpointing=args.checkpointing,
        )
        gc.collect()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        reset = reset_peak_rss()
        before = current_rss()
        trainer.train()
        if device == "cuda":
            measured = torch.cuda.max_memory_allocated() + estimate.overhead  # the context is not allocated memory
        else:
            measured = peak_rss()
    result = {
        "device": device,
        "batch_tokens": tokens,
        "labelled_tokens": labelled,
        "measured_bytes": measured,
        "estimated_bytes": estimate.total,
        "parts": estimate.parts(),
        "peak_reset_after_loading": reset,
        "resident_before_training": before,
    }
    print(json.dumps(result))
    print(f"ratio={measured / estimate.total:.3f}")
    return result


if __name__ == "__main__":
    main()
