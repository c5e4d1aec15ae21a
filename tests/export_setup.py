"""Shared by the export tests: a LoRA adapter that visibly changes a model, greedy decoding, a held-out demo input."""

from __future__ import annotations

from pathlib import Path

from apps.demo.generator import generate_examples

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: str | Path, out: Path, *, seed: int = 0, scale: float | None = None) -> Path:
    """A LoRA adapter on every projection with random A and B (peft's default leaves B at zero: no effect).

    ``scale`` multiplies B, for a real model that should stay coherent with the adapter on."""
    import torch
    from peft import LoraConfig, get_peft_model

    from worker.models import load_model

    if (out / "adapter_model.safetensors").is_file():
        return out
    torch.manual_seed(seed)
    model = get_peft_model(
        load_model(str(base_dir), device="cpu"),
        LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False),
    )
    if scale is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(scale)
    model.save_pretrained(str(out))
    return out


def held_out_messages() -> list[dict]:
    """A demo customer message from past the examples the demo trains on (its prompt only)."""
    return generate_examples(320, seed=7)[-1].messages[:-1]


def prompt_ids(tokenizer, messages: list[dict]):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")


def greedy(model, ids, tokens: int = 24) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False, pad_token_id=0
        )
    return out[0, ids.shape[1] :].tolist()
