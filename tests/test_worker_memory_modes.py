"""Each memory mode's training configuration (worker/train.py): gradient checkpointing on the tiny model, the 4-bit
base refused without CUDA (before anything loads), and the kernels a run uses named in its log."""

from __future__ import annotations

import pytest

from worker.train import Hooks, TrainConfig, build_trainer, choose_kernels, kernels_line, train
from worker.train_config import QLORA_NEEDS_CUDA


def conv(i: int) -> list[dict]:
    return [
        {"role": "user", "content": f"Where is order #{100 + i}? " + "Please check. " * (i % 5)},
        {"role": "assistant", "content": f"Order #{100 + i} ships today."},
    ]


def test_a_4_bit_base_is_refused_without_cuda_with_the_reason_before_anything_loads(tmp_path):
    config = TrainConfig(model_dir=str(tmp_path / "no-model-here"), output_dir=str(tmp_path), memory_mode="qlora")
    with pytest.raises(ValueError) as caught:
        build_trainer(config, [conv(1)], [], between=lambda: pytest.fail("nothing may load"))
    assert str(caught.value) == QLORA_NEEDS_CUDA
    assert "needs an NVIDIA GPU" in QLORA_NEEDS_CUDA and "bitsandbytes" in QLORA_NEEDS_CUDA


def test_on_a_cpu_attention_is_sdpa_and_liger_is_off_whatever_was_asked(tmp_path):
    asked = TrainConfig(model_dir="m", output_dir=str(tmp_path), attention="flash_attention_2", liger_kernels=True)
    kernels = choose_kernels(asked, "cpu")
    assert kernels == {"attention": "sdpa", "liger": False}
    line = kernels_line(asked, "cpu", kernels)
    assert "attention: sdpa (asked: flash_attention_2)" in line
    assert "Liger kernels: off (not installed or no GPU)" in line
    assert choose_kernels(TrainConfig(model_dir="m", output_dir="o", attention="eager"), "cpu")["attention"] == "eager"
    with pytest.raises(ValueError, match="Unknown attention 'fast'"):
        choose_kernels(TrainConfig(model_dir="m", output_dir="o", attention="fast"), "cpu")


def test_gradient_checkpointing_trains_the_same_adapter_and_the_log_says_so(tiny_model_dir, tmp_path):
    data = [conv(i) for i in range(8)]
    values = {"max_steps": 3, "batch_size": 4, "learning_rate": 5e-3, "max_seq_length": 96, "lora_dropout": 0.0}
    logs: dict[bool, list[str]] = {False: [], True: []}
    results = {}
    for checkpointing in (False, True):
        config = TrainConfig(
            model_dir=str(tiny_model_dir),
            output_dir=str(tmp_path / str(checkpointing)),
            gradient_checkpointing=checkpointing,
            **values,
        )
        results[checkpointing] = train(config, data, [], Hooks(on_log=logs[checkpointing].append))
    assert "memory: fp32 base + LoRA on cpu, gradient checkpointing on; attention: sdpa" in "\n".join(logs[True])
    assert "gradient checkpointing off" in "\n".join(logs[False])
    plain = [m.train_loss for m in results[False].history if m.train_loss is not None]
    recomputed = [m.train_loss for m in results[True].history if m.train_loss is not None]
    assert len(plain) == 3 and recomputed == pytest.approx(plain, rel=1e-4)  # recomputing changes memory, not math


def test_the_trainer_recomputes_layers_only_when_asked(tiny_model_dir, tmp_path):
    on = TrainConfig(model_dir=str(tiny_model_dir), output_dir=str(tmp_path), gradient_checkpointing=True)
    trainer, *_ = build_trainer(on, [conv(i) for i in range(4)], [])
    base = trainer.model.get_base_model()
    assert trainer.args.gradient_checkpointing
    assert trainer.args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert base.config._attn_implementation == "sdpa"
    off = TrainConfig(model_dir=str(tiny_model_dir), output_dir=str(tmp_path / "off"))
    assert not build_trainer(off, [conv(i) for i in range(4)], [])[0].args.gradient_checkpointing
