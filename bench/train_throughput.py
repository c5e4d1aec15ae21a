"""Training throughput: our padding-free LoRA training vs a plain Trainer + peft script that pads each batch
to its longest example. Same model (the shipped SmolLM2-135M-Instruct), data, LoRA settings, seed and steps.

    .venv/bin/python bench/train_throughput.py [--steps 12] [--batch-size 8]

Tokens/s counts real (non-padding) tokens only, for both. Prints `ratio=X` last.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PRODUCTS = ["kettle", "desk lamp", "backpack", "blender", "headphones", "router", "coffee grinder", "jacket"]
PROBLEMS = ["arrived broken", "has not arrived", "was charged twice", "is the wrong colour", "stopped working"]
FILLER = ["I ordered it three weeks ago for my sister's birthday.", "The tracking page has not changed for days.",
          "I already tried restarting it and reading the manual.", "Your chat bot could not help me either.",
          "This is the second time this has happened this year.", "I would really appreciate a quick answer."]


def make_conversations(count: int, seed: int = 0) -> list[list[dict]]:
    """Variable-length support conversations: 0 to 14 extra sentences in the message, 1 to 4 in the reply."""
    rng = random.Random(seed)
    conversations = []
    for i in range(count):
        name, product, problem = f"Customer{i}", rng.choice(PRODUCTS), rng.choice(PROBLEMS)
        extra = " ".join(rng.choice(FILLER) for _ in range(rng.randint(0, 14)))
        reply = " ".join(["We are sorry to hear that."] * rng.randint(1, 4))
        conversations.append([
            {"role": "system", "content": "You answer for Lumo support: greet by name, answer in one sentence, sign off."},
            {"role": "user", "content": f"Hi, I'm {name}. My {product} {problem}. {extra}"},
            {"role": "assistant", "content": f"Hi {name},\n{reply} A replacement {product} ships today.\nWarm regards, Lumo"},
        ])
    return conversations


def baseline(model_dir: str, features: list[dict], val: list[dict], args: argparse.Namespace, out: str) -> dict:
    """The plain script: Trainer + peft, each batch padded to its longest example."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    training = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch_size,
                                 per_device_eval_batch_size=args.batch_size, max_steps=args.steps, learning_rate=1e-3,
                                 lr_scheduler_type="cosine", warmup_ratio=0.05, seed=args.seed, data_seed=args.seed,
                                 logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                                 eval_strategy="epoch",  # ours validates at the end of each epoch too: same work timed
                                 remove_unused_columns=False, include_num_input_tokens_seen="non_padding")
    trainer = Trainer(model=model, args=training, train_dataset=features, eval_dataset=val,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": trainer.state.num_input_tokens_seen, "val_loss": trainer.evaluate()["eval_loss"]}


def ours(model_dir: str, train: list, val: list, args: argparse.Namespace, out: str) -> dict:
    from worker.train import TrainConfig, build_trainer

    config = TrainConfig(model_dir=model_dir, output_dir=out, max_steps=args.steps, batch_size=args.batch_size,
                         learning_rate=1e-3, max_seq_length=512, seed=args.seed, save_steps=10_000)
    trainer, _tok, _features, _val = build_trainer(config, train, val)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": trainer.state.num_input_tokens_seen, "val_loss": trainer.evaluate()["eval_loss"]}


def main() -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from worker.data import encode_conversations
    from worker.models import ModelSpec, load_tokenizer, resolve_model_dir, shipped_gguf_path

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    model_dir = resolve_model_dir(ModelSpec("gguf", str(shipped_gguf_path()), cache_dir=str(REPO / "var" / "models")))
    train = make_conversations(args.steps * args.batch_size, seed=args.seed)
    val = make_conversations(16, seed=args.seed + 1)
    tokenizer = load_tokenizer(model_dir)
    features = encode_conversations(tokenizer, train, 512)
    val_features = encode_conversations(tokenizer, val, 512)
    lengths = sorted(len(f["input_ids"]) for f in features)
    print(f"model {model_dir}; {len(features)} examples, tokens min {lengths[0]} median {lengths[len(lengths) // 2]} "
          f"max {lengths[-1]}; {args.steps} steps x batch {args.batch_size}; torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        a = baseline(model_dir, features, val_features, args, f"{tmp}/baseline")
        b = ours(model_dir, train, val, args, f"{tmp}/ours")
    base_rate, our_rate = a["tokens"] / a["seconds"], b["tokens"] / b["seconds"]
    print(f"baseline (padded): {a['tokens']} real tokens in {a['seconds']:.1f} s = {base_rate:.1f} tokens/s, "
          f"final val loss {a['val_loss']:.4f}")
    print(f"ours (padding-free): {b['tokens']} tokens in {b['seconds']:.1f} s = {our_rate:.1f} tokens/s, "
          f"final val loss {b['val_loss']:.4f}")
    print(f"loss difference {abs(b['val_loss'] - a['val_loss']) / a['val_loss'] * 100:.2f}%")
    print(f"ratio={our_rate / base_rate:.2f}")


if __name__ == "__main__":
    main()
