"""Cancel during a validation pass: how long a PM waits after pressing Cancel, against the whole pass (what a
cancel waited for before issue 11: the epoch end switched evaluation back on, 186 s on the 135M model).

    .venv/bin/python bench/cancel_latency.py [--rounds 3] [--val 64] [--shipped]

Each round runs both sides on the same data and seed, alternately:
- pass: one epoch of 3 steps then its validation pass; seconds from step 3's logged loss (just before the pass)
  to the validation loss (its end);
- cancel: the same run, cancelled at that same moment; seconds from the request until `train()` has returned.
The tiny random Llama by default (seconds per round); --shipped uses SmolLM2-135M-Instruct (minutes).
Prints every round, then `ratio=<median of pass / cancel> (min x, max y, rounds N)` (bench/_rounds.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _rounds import add_rounds_argument, alternate  # noqa: E402


def conversations(count: int, offset: int = 0) -> list[list[dict]]:
    return [
        [
            {"role": "system", "content": "You answer for Lumo support."},
            {"role": "user", "content": f"Hi, I'm Customer{i}. Where is order #{100 + i}? " + "It is late. " * (i % 5)},
            {"role": "assistant", "content": f"Hi Customer{i},\nOrder #{100 + i} ships today.\nWarm regards, Lumo"},
        ]
        for i in range(offset, offset + count)
    ]


def model_dir(shipped: bool) -> str:
    from worker.models import ModelSpec, build_tiny_llama, resolve_model_dir, shipped_gguf_path

    if shipped:
        return resolve_model_dir(ModelSpec("gguf", str(shipped_gguf_path()), cache_dir=str(REPO / "var" / "models")))
    return str(build_tiny_llama(REPO / "var" / "test-models" / "tiny-llama"))


def one(side: str, model: str, val: list[list[dict]]) -> float:
    from worker.train import Hooks, TrainConfig, train

    marks: dict[str, float] = {}

    def on_metric(m):
        if m.step == 3 and m.train_loss is not None:
            marks["asked"] = time.perf_counter()
        if m.val_loss is not None:
            marks["validated"] = time.perf_counter()

    hooks = Hooks(on_metric=on_metric, should_cancel=lambda: side == "cancel" and "asked" in marks)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model_dir=model, output_dir=out, max_steps=3, batch_size=4, save_steps=100, max_seq_length=256, seed=1
        )
        result = train(config, conversations(12), val, hooks)
        ended = time.perf_counter()
    if side == "cancel":
        assert result.status == "cancelled" and "validated" not in marks, result.status
        return ended - marks["asked"]
    return marks["validated"] - marks["asked"]


def main() -> None:
    parser = argparse.ArgumentParser()
    add_rounds_argument(parser)
    parser.add_argument("--val", type=int, default=64, help="validation conversations (batches of 4)")
    parser.add_argument("--shipped", action="store_true", help="the shipped 135M model instead of the tiny one")
    args = parser.parse_args()
    model, val = model_dir(args.shipped), conversations(args.val, 500)
    alternate(
        args.rounds,
        lambda n: one("pass", model, val),
        lambda n: one("cancel", model, val),
        ratio=lambda full, cancel: full / cancel,
        digits=1,
        describe=lambda full, cancel: f"validation pass {full:.2f} s, cancel during it {cancel:.3f} s",
    )


if __name__ == "__main__":
    main()
