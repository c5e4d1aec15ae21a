"""The memory estimate (worker/memory.py): exact parameter counts for real model shapes (built on the meta device
from the configs in bench/model_configs, nothing downloaded), what each memory mode saves, and the estimate
against the measured peak of training the tiny model and the shipped 135M one on this CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.memory import GB, Shape, estimate_memory, fit_words

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "bench" / "model_configs"
ALL_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Published parameter counts (the safetensors totals on each model's Hugging Face page).
PUBLISHED = {
    "llama-3.1-8b": 8_030_261_248,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-0.5b": 494_032_768,
}


def shape(name: str) -> Shape:
    return Shape.from_config(json.loads((CONFIGS / name / "config.json").read_text()))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_real_configs_build_models_with_exactly_the_published_parameter_count(name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(CONFIGS / name))
    with torch.device("meta"):  # no memory, no download: the shapes only
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert shape(name).parameters() == PUBLISHED[name]  # what registration records and the estimate counts


def test_an_8b_model_needs_a_4_bit_base_or_checkpointing_to_train_on_a_24_gb_card():
    llama = shape("llama-3.1-8b")
    run = {"lora_r": 16, "target_modules": ALL_LAYERS, "batch_tokens": 8 * 512}
    full = estimate_memory(llama, mode="lora", **run)
    four_bit = estimate_memory(llama, mode="qlora", **run)
    four_bit_recomputed = estimate_memory(llama, mode="qlora", gradient_checkpointing=True, **run)
    # bf16 weights: two bytes a parameter; the 4-bit base holds its linear layers in about half a byte
    assert full.weights == 2 * PUBLISHED["llama-3.1-8b"]
    assert four_bit.weights < 0.55 * full.weights
    assert four_bit_recomputed.activations < four_bit.activations / 10
    assert full.total > 24 * GB and four_bit.total > 24 * GB  # an 8B model at this batch: activations dominate
    assert four_bit_recomputed.total < 24 * GB
    assert fit_words(four_bit_recomputed.total, 24).startswith("fits 24 GB with ")
    assert "short" in fit_words(full.total, 24)


def test_logits_are_counted_only_where_labels_are_for_models_whose_loss_allows_it():
    llama = shape("qwen2.5-0.5b")
    few = estimate_memory(llama, batch_tokens=4096, labelled_tokens=512)
    many = estimate_memory(llama, batch_tokens=4096, labelled_tokens=4096)
    assert many.logits == 8 * few.logits
    other = Shape(**{**llama.to_dict(), "model_type": "gemma2"})  # soft-capped logits: the model's own loss
    assert estimate_memory(other, batch_tokens=4096, labelled_tokens=512).logits == many.logits


def measured_against_estimate(model_dir: Path, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "memory_peak.py"), "--model", str(model_dir), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    ).stdout.splitlines()
    assert out[-1].startswith("ratio=")
    return json.loads(out[-2])


def test_the_estimate_is_within_a_quarter_of_the_measured_peak_training_the_tiny_model(tiny_model_dir):
    for args in ((), ("--checkpointing",)):
        result = measured_against_estimate(tiny_model_dir, "--steps", "1", *args)
        assert result["peak_reset_after_loading"]
        assert 0.75 <= result["measured_bytes"] / result["estimated_bytes"] <= 1.25, result


def test_the_estimate_is_within_a_quarter_of_the_measured_peak_training_the_shipped_model(shipped_model_dir):
    result = measured_against_estimate(
        shipped_model_dir, "--steps", "1", "--batch-size", "4", "--max-seq-length", "128"
    )
    assert 0.75 <= result["measured_bytes"] / result["estimated_bytes"] <= 1.25, result
