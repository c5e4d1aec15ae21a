"""Training throughput: our padding-free LoRA training vs a plain Trainer + peft script that pads each batch
to its longest example. Same model (the shipped SmolLM2-135M-Instruct), data, LoRA settings, seed and steps.

    .venv/bin/python bench/train_throughput.py [--steps 6] [--batch-size 8] [--rounds 3] [--threads N]
                                               [--clock wall|cpu] [--row-tokens 768] [--attn sdpa] [--first baseline]

The two sides run alternately (baseline, ours, baseline, ours, ...; `--first ours` swaps them), each round with a
freshly loaded model, after an untimed warm-up step of each (first-call allocations, page cache). Tokens/s
counts real (non-padding) tokens only, for both. Every round prints both sides and their ratio (ours ÷ baseline
tokens/s); the last line is `ratio=<median> (min x, max y, rounds N)` (bench/_rounds.py).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _rounds import add_rounds_argument, alternate  # noqa: E402

# wall: elapsed seconds. cpu: this process's CPU seconds, which other jobs on a shared machine barely change;
# meaningful with --threads 1 only (with more threads it also counts the time OpenMP threads spin waiting).
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}

PRODUCTS = ["kettle", "desk lamp", "backpack", "blender", "headphones", "router", "coffee grinder", "jacket"]
PROBLEMS = ["arrived broken", "has not arrived", "was charged twice", "is the wrong colour", "stopped working"]
FILLER = [
    "I ordered it three weeks ago for my sister's birthday.",
    "The tracking page has not changed for days.",
    "I already tried restarting it and reading the manual.",
    "Your chat bot could not help me either.",
    "This is the second time this has happened this year.",
    "I would really appreciate a quick answer.",
]


def make_conversations(count: int, seed: int = 0) -> list[list[dict]]:
    """Variable-length support conversations: 0 to 14 extra sentences in the message, 1 to 4 in the reply."""
    rng = random.Random(seed)
    conversations = []
    for i in range(count):
        name, product, problem = f"Customer{i}", rng.choice(PRODUCTS), rng.choice(PROBLEMS)
        extra = " ".join(rng.choice(FILLER) for _ in range(rng.randint(0, 14)))
        reply = " ".join(["We are sorry to hear that."] * rng.randint(1, 4))
        conversations.append(
            [
                {
                    "role": "system",
                    "content": "You answer for Lumo support: greet by name, answer in one sentence, sign off.",
                },
                {"role": "user", "content": f"Hi, I'm {name}. My {product} {problem}. {extra}"},
                {
                    "role": "assistant",
                    "content": f"Hi {name},\n{reply} A replacement {product} ships today.\nWarm regards, Lumo",
                },
            ]
        )
    return conversations


def baseline(model_dir: str, features: list[dict], val: list[dict], args: argparse.Namespace, out: str) -> dict:
    """The plain script: Trainer + peft, each batch padded to its longest example."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, use_safetensors=True, attn_implementation=args.attn
    )
    model.config.use_cache = False
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        ),
    )
    training = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_ratio=0.05,
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        eval_strategy="epoch",  # ours validates at the end of each epoch too: same work timed
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=features,
        eval_dataset=val,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100),
    )
    trainer.remove_callback(PrinterCallback)  # ours prints nothing per step either
    started = CLOCK[args.clock]()
    trainer.train()
    seconds = CLOCK[args.clock]() - started
    return {
        "seconds": seconds,
        "tokens": trainer.state.num_input_tokens_seen,
        "val_loss": trainer.evaluate()["eval_loss"],
    }


def ours(model_dir: str, train: list, val: list, args: argparse.Namespace, out: str) -> dict:
    from worker.train import TrainConfig, build_trainer

    config = TrainConfig(
        model_dir=model_dir,
        output_dir=out,
        max_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=1e-3,
        max_seq_length=512,
        seed=args.seed,
        save_steps=10_000,
        pack_row_tokens=args.row_tokens,
    )
    trainer, _tok, _features, _val = build_trainer(config, train, val)
    if args.attn != "sdpa":
        trainer.model.get_base_model().set_attn_implementation(args.attn)
    started = CLOCK[args.clock]()
    trainer.train()
    seconds = CLOCK[args.clock]() - started
    return {
        "seconds": seconds,
        "tokens": trainer.state.num_input_tokens_seen,
        "val_loss": trainer.evaluate()["eval_loss"],
    }


def warm_up(model_dir: str, features: list[dict], args: argparse.Namespace) -> float:
    """One untimed forward + backward of a padded and of a packed batch, so that neither side's first round pays
    the process's first-call costs (allocator growth, kernel set-up, reading the weights from disk)."""
    import torch
    from transformers import AutoModelForCausalLM

    from worker.data import PackedRowsCollator, padded_collator
    from worker.models import load_tokenizer

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, use_safetensors=True, attn_implementation=args.attn
    )
    model.config.use_cache = False
    model.requires_grad_(False)
    model.enable_input_require_grads()  # backward through every layer, as with LoRA, without full weight gradients
    batch = features[: args.batch_size]
    padded = padded_collator(load_tokenizer(model_dir))([dict(f) for f in batch])
    packed = PackedRowsCollator(args.row_tokens)(batch)
    packed.pop("real_tokens")
    for inputs in (padded, packed):
        model(**inputs).loss.backward()
    return time.perf_counter() - started


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from worker.data import PACK_ROW_TOKENS, encode_conversations
    from worker.models import ModelSpec, load_tokenizer, resolve_model_dir, shipped_gguf_path

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=3)
    add_rounds_argument(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--row-tokens", type=int, default=PACK_ROW_TOKENS, help="our packed row length")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention, both sides")
    parser.add_argument("--first", default="baseline", choices=["baseline", "ours"], help="which side opens a round")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCK), help="cpu: CPU seconds (use --threads 1)")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = resolve_model_dir(ModelSpec("gguf", str(shipped_gguf_path()), cache_dir=str(REPO / "var" / "models")))
    train = make_conversations(args.steps * args.batch_size, seed=args.seed)
    val = make_conversations(16, seed=args.seed + 1)
    tokenizer = load_tokenizer(model_dir)
    features = encode_conversations(tokenizer, train, 512)
    val_features = encode_conversations(tokenizer, val, 512)
    lengths = sorted(len(f["input_ids"]) for f in features)
    print(
        f"model {Path(model_dir).name}; {len(features)} examples, tokens min {lengths[0]} median "
        f"{lengths[len(lengths) // 2]} max {lengths[-1]}; {args.steps} steps x batch {args.batch_size}; "
        f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); "
        f"{args.clock} clock; attention {args.attn}; our rows of {args.row_tokens} tokens; {args.first} first; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    if args.warm_up:
        print(f"warm-up (untimed): {warm_up(model_dir, features, args):.1f} s", flush=True)

    def side(name: str):
        def run(n: int) -> dict:
            with tempfile.TemporaryDirectory() as tmp:
                if name == "baseline":
                    result = baseline(model_dir, features, val_features, args, f"{tmp}/baseline")
                else:
                    result = ours(model_dir, train, val, args, f"{tmp}/ours")
            result["rate"] = result["tokens"] / result["seconds"]
            label = "baseline (padded)" if name == "baseline" else "ours (padding-free)"
            print(
                f"round {n} {label:19s}: {result['tokens']} real tokens in {result['seconds']:6.1f} s = "
                f"{result['rate']:6.1f} tokens/s, final val loss {result['val_loss']:.4f}, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            return result

        return run

    def describe(a: dict, b: dict) -> str:
        base, our = (a, b) if args.first == "baseline" else (b, a)
        return f"val loss difference {abs(our['val_loss'] - base['val_loss']) / base['val_loss'] * 100:.2f}%"

    def ratio(a: dict, b: dict) -> float:
        base, our = (a, b) if args.first == "baseline" else (b, a)
        return our["rate"] / base["rate"]

    first, second = ("baseline", "ours") if args.first == "baseline" else ("ours", "baseline")
    alternate(args.rounds, side(first), side(second), ratio=ratio, describe=describe)


if __name__ == "__main__":
    main()
