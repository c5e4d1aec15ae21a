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


def measure(
    model_dir: str,
    *,
    steps: int = 3,
    batch_size: int = 8,
    max_seq_length: int = 256,
    rank: int = 8,
    mode: str = "lora",
    checkpointing: bool = False,
    examples: int = 32,
    adapter_out: str = "",
) -> dict:
    """Train ``steps`` steps of the worst batch; its peak memory, the estimate and tokens/s (after the first step)."""
    import time

    import torch
    from train_throughput import make_conversations
    from transformers import TrainerCallback

    from worker.memory import Shape, estimate_memory
    from worker.train import TrainConfig, build_trainer

    class StepClock(TrainerCallback):
        started = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:  # the first step warms up (allocations, kernels): not timed
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.started, self.tokens = time.perf_counter(), state.num_input_tokens_seen

    torch.manual_seed(0)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model_dir=str(model_dir),
            output_dir=out,
            max_steps=steps,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            lora_r=rank,
            memory_mode=mode,
            gradient_checkpointing=checkpointing,
            save_steps=10_000,
        )
        trainer, _tok, features, _val = build_trainer(config, make_conversations(examples), [], callbacks=[clock])
        device = trainer.args.device.type
        batch, tokens, labelled = worst_batch(features, batch_size)
        trainer.train_dataset = batch * steps  # every step trains the worst batch
        shape = Shape.from_config(json.loads((Path(model_dir) / "config.json").read_text()))
        estimate = estimate_memory(
            shape,
            mode=mode,
            device=device,
            lora_r=rank,
            target_modules=config.target_modules,
            lora_dropout=config.lora_dropout,
            batch_tokens=tokens,
            labelled_tokens=labelled,
            gradient_checkpointing=checkpointing,
        )
        gc.collect()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        reset = reset_peak_rss()
        before = current_rss()
        trainer.train()
        if device == "cuda":
            torch.cuda.synchronize()
            measured = torch.cuda.max_memory_allocated() + estimate.overhead  # the context is not allocated memory
        else:
            measured = peak_rss()
        seconds = time.perf_counter() - clock.started if clock.started else 0.0
        timed_tokens = trainer.state.num_input_tokens_seen - clock.tokens if clock.started else 0
        if adapter_out:
            trainer.model.save_pretrained(adapter_out, safe_serialization=True)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        del trainer
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return {
        "device": device,
        "batch_tokens": tokens,
        "labelled_tokens": labelled,
        "measured_bytes": measured,
        "estimated_bytes": estimate.total,
        "parts": estimate.parts(),
        "peak_reset_after_loading": reset,
        "resident_before_training": before,
        "tokens_per_second": timed_tokens / seconds if seconds else None,
        "parameters": shape.parameters(),
        "losses": losses,
    }


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
    result = measure(
        args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        rank=args.rank,
        mode=args.mode,
        checkpointing=args.checkpointing,
        examples=args.examples,
    )
    print(json.dumps(result))
    print(f"ratio={result['measured_bytes'] / result['estimated_bytes']:.3f}")
    return result


if __name__ == "__main__":
    main()
