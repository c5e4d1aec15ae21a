"""Checkpoint upload/download through the artifact store: a real checkpoint of the demo model (the shipped
SmolLM2-135M-Instruct, LoRA with the "quick" preset's settings: r 8 on q/k/v/o) written by `worker.train`, then
stored in and fetched from a local SeaweedFS S3 gateway (tests/object_store.py) with `worker/artifacts.py`, as a
worker does after each save and before a resume. Also the final adapter folder alone, and the base model folder
(the shipped model's safetensors conversion) as a node without it fetches it into its bounded cache
(`LocalCache.fetch`, what `apps.runs.artifacts.base_model_dir` and the inference process's `Resolver` do).

    .venv/bin/python bench/artifact_transfer.py [--repeats 5]

Prints sizes and the median of the repeats, in seconds. The store is on the same machine: this measures the
client's and the store's work, not a network.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from bench.train_throughput import make_conversations
    from tests.object_store import start_seaweedfs
    from worker.artifacts import LocalCache, open_store
    from worker.models import ModelSpec, resolve_model_dir, shipped_gguf_path
    from worker.train import Hooks, TrainConfig, train

    work = Path(tempfile.mkdtemp(prefix="artifact-bench-"))
    model_dir = resolve_model_dir(ModelSpec("gguf", str(shipped_gguf_path()), cache_dir=str(REPO / "var" / "models")))
    config = TrainConfig(
        model_dir=model_dir,
        output_dir=str(work / "run"),
        lora_r=8,
        lora_alpha=16,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        max_steps=2,
        save_steps=2,
        batch_size=4,
        max_seq_length=128,
        learning_rate=1e-3,
    )
    result = train(config, make_conversations(8), make_conversations(2, seed=1), Hooks())
    checkpoint = next((work / "run" / "checkpoints").glob("checkpoint-*"))
    adapter = Path(result.adapter_dir)

    store_process = start_seaweedfs(work / "seaweedfs")
    try:
        store_process.create_bucket("bench")
        store = open_store("s3://bench/studio", default_root=work, env=store_process.env("bench"))
        store.check()
        cache = LocalCache(work / "cache", max_bytes=2 * 2**30)
        for name, folder in (("checkpoint", checkpoint), ("adapter", adapter), ("base model", Path(model_dir))):
            ups, downs = [], []
            for i in range(args.repeats):
                key = f"runs/1/{name.replace(' ', '-')}-{i}"
                started = time.perf_counter()
                store.put_dir(folder, key)
                ups.append(time.perf_counter() - started)
                started = time.perf_counter()
                fetched = cache.fetch(store, key)
                downs.append(time.perf_counter() - started)
                shutil.rmtree(fetched)  # the disk: a base model is 600 MB
                store.delete_prefix(key)
            files = sum(1 for p in folder.rglob("*") if p.is_file())
            print(
                f"{name}: {size_mb(folder):.2f} MB in {files} files; upload median {statistics.median(ups):.3f} s "
                f"(min {min(ups):.3f}, max {max(ups):.3f}); download median {statistics.median(downs):.3f} s "
                f"(min {min(downs):.3f}, max {max(downs):.3f}); {args.repeats} repeats"
            )
    finally:
        store_process.stop()


if __name__ == "__main__":
    main()
