"""LoRA fine-tuning with Hugging Face `Trainer` + `peft`. No Django here.

Reads top to bottom: one `TrainConfig`, `train()` loads the model, adds LoRA, encodes the conversations
(loss only on assistant turns, padding-free batches), and runs `Trainer` with one callback that reports
progress, phases and metrics, and stops within one training step or one validation batch when cancel is
asked (cancel is also checked between the stages of loading). A pause (the worker is shutting down) stops
at the next step end with a checkpoint, or within one validation batch: the batches a validation pass finished
are kept (`ValidationProgress`), and the next attempt goes on with the pass where it stopped. Checkpoints
(adapter + optimizer + scheduler + RNG state) go to ``output_dir/checkpoints`` every ``save_steps``; calling
`train()` again with the same ``output_dir`` resumes from the last one, and a checkpoint at the final step is
finished (validated, adapter saved) without training again. The adapter is saved in standard PEFT format in
``output_dir/adapter``; the adapters of the last ``EPOCH_ADAPTERS_KEPT`` epoch ends in
``output_dir/epochs/step-<step>`` (OpenAI keeps the last three epochs' checkpoints, each servable). Logs carry
``mean_token_accuracy`` (and ``eval_mean_token_accuracy``): the share of learnt tokens the model predicts right,
counted in the loss's own pass. The callback, that loss and the `Trainer` subclasses are in `worker/trainer.py`.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from worker.data import PackedRowsCollator, encode_conversations, padded_collator, token_count
from worker.train_config import (  # noqa: F401 - re-exported: callers of train() import them from here
    DEFAULT_TARGETS,
    QLORA_NEEDS_CUDA,
    Hooks,
    Metric,
    Progress,
    Stopped,
    TrainConfig,
    TrainResult,
    steps_per_epoch,
    stop_point,
)
from worker.trainer import PackedTrainer, PhaseOnce, RunCallback, RunTrainer, StopState, ValidationProgress

log = logging.getLogger(__name__)


def common_args(config: TrainConfig, device: str, bf16: bool, evaluate: bool) -> dict:
    """The `TrainingArguments` every way of learning shares (supervised here, dpo and reinforcement in
    worker/train_methods.py)."""
    return dict(
        output_dir=str(Path(config.output_dir) / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        eval_strategy="epoch" if evaluate else "no",
        bf16=bf16,
        use_cpu=device == "cpu",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
    )


def build_trainer(
    config: TrainConfig,
    train_conversations: list[list[dict]],
    val_conversations: list[list[dict]],
    callbacks: list | None = None,
    between: Callable[[], None] | None = None,
):
    """The model with LoRA, the encoded splits and a configured `Trainer` (the benchmark reuses it).

    ``between`` is called between the stages of loading (tokenizer, weights, LoRA, encoding): it may raise
    `Stopped` so that cancel is seen while a model loads."""
    between = between or (lambda: None)
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, TrainingArguments, set_seed

    from worker.models import load_model, load_tokenizer, pick_device

    set_seed(config.seed)
    device = config.device or pick_device()
    bf16 = config.bf16 and device == "cuda" and torch.cuda.is_bf16_supported()
    kernels = choose_kernels(config, device)
    quantization = four_bit_config() if config.memory_mode == "qlora" and device == "cuda" else None
    if config.memory_mode == "qlora" and quantization is None:
        raise ValueError(QLORA_NEEDS_CUDA)
    if config.memory_mode not in ("lora", "qlora"):
        raise ValueError(f"Unknown memory mode {config.memory_mode!r}: use lora or qlora.")
    tokenizer = load_tokenizer(config.model_dir)
    between()
    model = load_model(
        config.model_dir,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        device=device,
        attn_implementation=kernels["attention"],
        quantization_config=quantization,
    )
    model.config.use_cache = False
    if quantization is not None:  # norms and embeddings in fp32, inputs that carry gradients into the 4-bit layers
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    between()
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
    )
    model = get_peft_model(model, lora)

    train_features = encode_conversations(tokenizer, train_conversations, config.max_seq_length)
    val_features = encode_conversations(tokenizer, val_conversations, config.max_seq_length)
    between()
    if not train_features:
        raise ValueError("No training example has an assistant turn within max_seq_length tokens.")

    args = TrainingArguments(
        **common_args(config, device, bf16, evaluate=bool(val_features)),
        group_by_length=not config.packing,
        remove_unused_columns=False,
        include_num_input_tokens_seen="no" if config.packing else "non_padding",
        # several nodes: each node keeps its own checkpoints (the rendezvous may make any node rank 0)
        save_on_each_node=distributed_nodes() > 1,
        ddp_find_unused_parameters=False,  # LoRA's trainable weights all take part in every step
        use_liger_kernel=kernels["liger"],
    )
    collator = PackedRowsCollator(config.pack_row_tokens) if config.packing else padded_collator(tokenizer)
    trainer_class = PackedTrainer if config.packing else RunTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_features,
        eval_dataset=val_features or None,
        data_collator=collator,
        callbacks=callbacks or [],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through our callback, not stdout
    trainer.kernels_line = kernels_line(config, device, kernels)
    return trainer, tokenizer, train_features, val_features


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def choose_kernels(config: TrainConfig, device: str) -> dict:
    """The attention implementation and whether Liger's kernels apply: what was asked, where it can run.

    "auto" attention is FlashAttention-2 when the ``flash_attn`` package is installed and the run is on a GPU, else
    PyTorch's sdpa. FlashAttention-2 asked for where it cannot run falls back to sdpa (the log says so); Liger's
    kernels (Triton) need a GPU and the ``liger_kernel`` package."""
    flash_ok = device == "cuda" and _installed("flash_attn")
    attention = config.attention
    if attention == "auto" or (attention == "flash_attention_2" and not flash_ok):
        attention = "flash_attention_2" if flash_ok else "sdpa"
    if attention not in ("sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"Unknown attention {config.attention!r}: use auto, sdpa, eager or flash_attention_2.")
    return {
        "attention": attention,
        "liger": bool(config.liger_kernels and device == "cuda" and _installed("liger_kernel")),
    }


def kernels_line(config: TrainConfig, device: str, kernels: dict) -> str:
    """One line for the run's log: memory mode, checkpointing, attention and Liger, as they were applied."""
    mode = "4-bit NF4 base (QLoRA)" if config.memory_mode == "qlora" else ("bf16" if device == "cuda" else "fp32")
    asked = f" (asked: {config.attention})" if config.attention not in ("auto", kernels["attention"]) else ""
    liger = "on" if kernels["liger"] else ("off (not installed or no GPU)" if config.liger_kernels else "off")
    return (
        f"memory: {mode} base + LoRA on {device}, gradient checkpointing "
        f"{'on' if config.gradient_checkpointing else 'off'}; attention: {kernels['attention']}{asked}; "
        f"Liger kernels: {liger}"
    )


def four_bit_config():
    """bitsandbytes' 4-bit NF4 with double quantization and bf16 compute (QLoRA). bitsandbytes is optional (the
    ``gpu`` extra): imported only here."""
    if not _installed("bitsandbytes"):
        raise ValueError(
            "A 4-bit base (QLoRA) needs the bitsandbytes package on the GPU worker: install the Studio's gpu extra."
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def distributed_nodes() -> int:
    """How many nodes this process's torchrun launch spans (1 outside torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return max(1, world // max(1, local))


def checkpoint_step(path: str | Path) -> int:
    """The global step a checkpoint folder (``checkpoint-<step>``) was saved at."""
    return int(Path(path).name.rsplit("-", 1)[1])


def last_checkpoint(output_dir: str) -> str:
    """The newest complete checkpoint, or "" if there is none.

    `Trainer` writes ``trainer_state.json`` last, so a checkpoint folder without a readable one was cut off by
    a worker that died while saving it: it is removed and the one before it is used.
    """
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return ""
    numbered = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()]
    for path in sorted(numbered, key=checkpoint_step, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log.warning("Removing %s: its worker stopped while writing it", path)
            shutil.rmtree(path, ignore_errors=True)
    return ""


def _is_final(checkpoint: str) -> bool:
    """Was this checkpoint saved at the run's last step? (`Trainer` saves there before the final validation.)"""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return 0 < int(state.get("max_steps") or 0) <= int(state.get("global_step") or 0)


def _load_final_checkpoint(trainer, checkpoint: str) -> None:
    """The adapter weights and trainer state of a final checkpoint, without stepping the optimizer again."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from transformers import TrainerState

    set_peft_model_state_dict(trainer.model, load_peft_weights(checkpoint, device=str(trainer.args.device)))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))


def _checkpoint_here(trainer, hooks: Hooks) -> None:
    """A pause that stopped a validation pass: keep the step in a checkpoint (`Trainer` saves after validating),
    so the next attempt trains no step again and finishes the pass."""
    step = trainer.state.global_step
    path = Path(trainer.args.output_dir) / f"checkpoint-{step}"
    if step and not path.is_dir() and trainer.optimizer is not None:
        trainer._save_checkpoint(trainer.model, trial=None)
        hooks.on_checkpoint(str(path))
        hooks.on_log(f"worker shutting down: checkpoint at step {step} during validation, then stopping")


def resume_point(trainer, config: TrainConfig, hooks: Hooks) -> tuple[str, bool]:
    """(the last checkpoint to go on from or "", whether it is the final step's): a final checkpoint is loaded
    and the run finishes without training again."""
    resume = last_checkpoint(config.output_dir)
    if resume and _is_final(resume):
        hooks.on_log(f"resuming from {resume}: the final step, so finishing without training")
        _load_final_checkpoint(trainer, resume)
        return resume, True
    if resume:
        hooks.on_log(f"resuming from {resume}")
    return resume, False


def note_stop(exc: Stopped, trainer, hooks: Hooks, stop: StopState) -> None:
    """Training stopped early (cancel or pause): a pause keeps a checkpoint of the step it stopped at."""
    stop.reason = exc.reason
    if exc.reason == "paused" and trainer is not None:
        _checkpoint_here(trainer, hooks)
    hooks.on_log(f"{exc.reason}: stopped" + (f" at step {trainer.state.global_step}" if trainer else " while loading"))


def train(
    config: TrainConfig,
    train_conversations: list[list[dict]],
    val_conversations: list[list[dict]],
    hooks: Hooks | None = None,
) -> TrainResult:
    """Train (or resume) a LoRA adapter; returns what happened. Raises on errors the caller should record.

    ``config.method`` "dpo" or "reinforcement" trains with TRL instead (worker/train_methods.py): then the two lists
    are preference pairs or prompts with their reference answers (see there)."""
    if config.method != "supervised":
        from worker.train_methods import train_method

        return train_method(config, train_conversations, val_conversations, hooks)
    hooks = copy.copy(hooks or Hooks())
    hooks.on_phase = PhaseOnce(hooks.on_phase)  # each change once, whether train() or the callback sees it first
    history: list[Metric] = []
    stop = StopState()
    started = time.perf_counter()
    trainer, train_features, resume, output = None, [], "", None
    try:
        hooks.on_phase("loading")
        stop_point(hooks)
        trainer, _tokenizer, train_features, _val = build_trainer(
            config,
            train_conversations,
            val_conversations,
            callbacks=[RunCallback(hooks, history, stop, str(Path(config.output_dir) / "epochs"))],
            between=functools.partial(stop_point, hooks),
        )
        hooks.on_log(trainer.kernels_line)
        resume, finished = resume_point(trainer, config, hooks)
        if not finished:
            if resume and ValidationProgress.losses_at(trainer.args.output_dir, checkpoint_step(resume)):
                hooks.on_log(f"finishing the validation pass of step {checkpoint_step(resume)} stopped last time")
                _load_final_checkpoint(trainer, resume)  # that step's weights and state, then its pass
                hooks.on_phase("validating")
                trainer.evaluate()
            output = trainer.train(resume_from_checkpoint=resume or None)
        final_val_loss = None
        if not stop.reason and trainer.eval_dataset is not None:
            evals = [m for m in history if m.val_loss is not None and m.step == trainer.state.global_step]
            if not evals:
                hooks.on_phase("validating")
                trainer.evaluate()  # the callback records it
                evals = [m for m in history if m.val_loss is not None]
            final_val_loss = evals[-1].val_loss
        if not stop.reason:
            stop_point(hooks)
    except Stopped as exc:
        note_stop(exc, trainer, hooks, stop)
    state = trainer.state if trainer is not None else None
    result = TrainResult(
        status=stop.reason or "succeeded",
        global_step=state.global_step if state else 0,
        total_steps=state.max_steps if state else 0,
        resumed_from=resume,
        history=history,
        trained_tokens=token_count(train_features) if train_features else 0,
        seconds=time.perf_counter() - started,
    )
    losses = [m.train_loss for m in history if m.train_loss is not None]
    logged = [e["loss"] for e in (state.log_history if state else []) if "loss" in e]
    result.final_train_loss = (losses or logged or [output.training_loss if output else None])[-1]
    rates = [m.tokens_per_second for m in history if m.tokens_per_second]
    result.tokens_per_second = rates[-1] if rates else None
    if stop.reason:
        return result
    result.final_val_loss = final_val_loss
    hooks.on_phase("saving")
    adapter_dir = Path(config.output_dir) / "adapter"
    if trainer.args.should_save:  # one process per run (DDP: local rank 0 of each node, as for checkpoints)
        trainer.model.save_pretrained(str(adapter_dir), safe_serialization=True)
    result.adapter_dir = str(adapter_dir)
    hooks.on_log(f"saved adapter to {adapter_dir}")
    return result
