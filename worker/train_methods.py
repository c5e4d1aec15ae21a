"""Preference (DPO) and reinforcement (GRPO) fine-tuning with TRL's trainers and a peft LoRA adapter. No Django.

`worker.train.train` sends a config whose ``method`` is "dpo" or "reinforcement" here; the run goes as a supervised
one does: the same `Hooks` and `RunCallback` (progress, metrics, cancel within a step, pause at a step end with a
checkpoint, phases), checkpoints every ``save_steps`` in ``output_dir/checkpoints``, a second call with the same
``output_dir`` resumes from the last one, and the adapter is saved in PEFT format in ``output_dir/adapter``.

- **dpo** (`DPOTrainer`): rows ``{"messages", "tools", "preferred", "non_preferred"}``. The reference model is the
  starting point, frozen: the base model (TRL disables the adapter for the reference pass) or, with
  ``start_adapter_dir``, base + that adapter (loaded as the trainable adapter; TRL keeps a frozen copy of it named
  "ref" for the reference pass). Validation on the held-out pairs logs the reward margin and preference accuracy.
- **reinforcement** (`GRPOTrainer`): rows ``{"messages", "reference_answer", ...}`` (the input turns and the ideal
  reply). ``num_generations`` replies are sampled per prompt and scored by one reward function per grader
  (`worker.graders.grade`), weighted by the grader's ``weight``. A missing score (None) is asked for once more;
  still missing, it goes to TRL as None (NaN: left out of the group's mean, never a 0), and a grader missing more
  than half of a step's scores fails the run with the reason (`RewardsMissing`).
"""

from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path

import torch

from worker.graders import grade
from worker.train import choose_kernels, common_args, four_bit_config, kernels_line, note_stop, resume_point
from worker.train_config import QLORA_NEEDS_CUDA, Hooks, Metric, Stopped, TrainConfig, TrainResult, stop_point
from worker.trainer import PhaseOnce, RunCallback, StopState

METHODS = ("dpo", "reinforcement")


class RewardsMissing(RuntimeError):
    """More than half of a step's scores from one grader were missing: the run fails with this reason."""


def _clean(message: dict) -> dict:
    """A message without empty keys (Arrow needs one type per key; None-valued keys say nothing)."""
    return {k: v for k, v in message.items() if v is not None}


def preference_rows(pairs: list[dict]) -> list[dict]:
    """Our pairs as TRL's conversational preference rows (prompt, chosen, rejected; tools as JSON when offered)."""
    rows = []
    for pair in pairs:
        row = {
            "prompt": [_clean(m) for m in pair["messages"]],
            "chosen": [_clean(pair["preferred"])],
            "rejected": [_clean(pair["non_preferred"])],
        }
        if any(p.get("tools") for p in pairs):
            row["tools"] = json.dumps(pair["tools"]) if pair.get("tools") else None
        rows.append(row)
    return rows


def prompt_rows(items: list[dict]) -> list[dict]:
    """Prompts as TRL's conversational prompt rows; every other field of the item goes to the reward functions."""
    return [
        {"prompt": [_clean(m) for m in item["messages"]], "reference_answer": item.get("reference_answer", "")}
        for item in items
    ]


class GraderReward:
    """TRL reward function for one grader: a score per completion, None where the grader gave none twice.

    Module-level and picklable; TRL names the logged metric after ``__name__`` (the grader's name)."""

    def __init__(self, spec: dict, name: str, hooks: Hooks) -> None:
        self.spec, self.__name__, self.hooks = spec, name, hooks

    def __call__(self, prompts, completions, reference_answer=None, **kwargs) -> list[float | None]:
        scores, errors = [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            text = completion[-1]["content"] if isinstance(completion, list) else str(completion)
            item = {"messages": prompt, "reference_answer": (reference_answer or [""] * len(prompts))[i]}
            item.update({k: v[i] for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(prompts)})
            result = grade(self.spec, {"output_text": text}, item, call_model=self.hooks.call_model)
            if result.score is None:  # asked once more (an endpoint that timed out may answer now)
                result = grade(self.spec, {"output_text": text}, item, call_model=self.hooks.call_model)
            if result.score is None:
                errors.append(result.error or "no score")
            scores.append(result.score)
        if errors:
            self.hooks.on_log(f"grader {self.__name__}: {len(errors)} of {len(scores)} scores missing ({errors[0]})")
        if len(errors) * 2 > len(scores):
            raise RewardsMissing(
                f"The grader {self.__name__!r} gave no score for {len(errors)} of the {len(scores)} replies of "
                f"one training step, even when asked twice; the last reason: {errors[-1]}"
            )
        return scores


def grader_rewards(graders: list[dict], hooks: Hooks) -> tuple[list[GraderReward], list[float]]:
    """One reward function per grader (names made unique) and the graders' weights (1 when not given)."""
    funcs, weights, seen = [], [], set()
    for i, spec in enumerate(graders):
        name = str(spec.get("name") or f"grader_{i + 1}")
        while name in seen:
            name += "_"
        seen.add(name)
        funcs.append(GraderReward(spec, name, hooks))
        weights.append(float(spec.get("weight", 1.0)))
    return funcs, weights


def _load(config: TrainConfig, between):
    """The tokenizer and the model to train: the base with a fresh LoRA config (peft_config), or with the start
    adapter loaded trainable (no peft_config)."""
    from peft import LoraConfig, PeftModel

    from worker.models import load_model, load_tokenizer, pick_device

    device = config.device or pick_device()
    if config.memory_mode not in ("lora", "qlora"):
        raise ValueError(f"Unknown memory mode {config.memory_mode!r}: use lora or qlora.")
    if config.memory_mode == "qlora" and device != "cuda":
        raise ValueError(QLORA_NEEDS_CUDA)
    bf16 = config.bf16 and device == "cuda" and torch.cuda.is_bf16_supported()
    kernels = choose_kernels(config, device)
    tokenizer = load_tokenizer(config.model_dir)
    between()
    model = load_model(
        config.model_dir,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        device=device,
        attn_implementation=kernels["attention"],
        quantization_config=four_bit_config() if config.memory_mode == "qlora" else None,
    )
    between()
    peft_config = None
    if config.start_adapter_dir:
        model = PeftModel.from_pretrained(model, config.start_adapter_dir, is_trainable=True)
    else:
        peft_config = LoraConfig(
            task_type="CAUSAL_LM",
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
        )
    return tokenizer, model, peft_config, device, bf16, kernels


def build_method_trainer(config: TrainConfig, train_rows: list[dict], val_rows: list[dict], hooks: Hooks, callbacks):
    """The TRL trainer of ``config.method`` on our rows (the benchmark reuses it)."""
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed

    between = functools.partial(stop_point, hooks)
    set_seed(config.seed)
    if config.method not in METHODS:
        raise ValueError(f"Unknown training method {config.method!r}: use supervised, dpo or reinforcement.")
    if not train_rows:
        raise ValueError("Nothing to train on: the training split is empty.")
    tokenizer, model, peft_config, device, bf16, kernels = _load(config, between)
    if config.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(
            **common_args(config, device, bf16, bool(val_rows)),
            beta=config.beta,
            max_length=config.max_seq_length,
        )
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(preference_rows(train_rows)),
            eval_dataset=Dataset.from_list(preference_rows(val_rows)) if val_rows else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    else:
        from trl import GRPOConfig, GRPOTrainer

        if not config.graders:
            raise ValueError("A reinforcement run needs at least one grader.")
        funcs, weights = grader_rewards(config.graders, hooks)
        args = GRPOConfig(
            **common_args(config, device, bf16, False),
            num_generations=config.num_generations,
            max_completion_length=config.max_completion_length,
            reward_weights=weights,
            beta=0.0,  # TRL's default: no reference pass, the clipped ratio keeps each step near the policy
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=funcs,
            args=args,
            train_dataset=Dataset.from_list(prompt_rows(train_rows)),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    between()
    trainer.remove_callback(PrinterCallback)
    trainer.kernels_line = kernels_line(config, device, kernels) + f"; method: {config.method}"
    return trainer


def train_method(
    config: TrainConfig, train_rows: list[dict], val_rows: list[dict], hooks: Hooks | None = None
) -> TrainResult:
    """Train (or resume) a preference or reinforcement run; returns what happened, raises what should be recorded."""
    hooks = copy.copy(hooks or Hooks())
    hooks.on_phase = PhaseOnce(hooks.on_phase)
    history: list[Metric] = []
    stop = StopState()
    started = time.perf_counter()
    trainer, resume = None, ""
    try:
        hooks.on_phase("loading")
        stop_point(hooks)
        trainer = build_method_trainer(config, train_rows, val_rows, hooks, [RunCallback(hooks, history, stop)])
        hooks.on_log(trainer.kernels_line)
        resume, finished = resume_point(trainer, config, hooks)
        if not finished:
            trainer.train(resume_from_checkpoint=resume or None)
        if not stop.reason and trainer.eval_dataset is not None:
            if not any(m.val_loss is not None and m.step == trainer.state.global_step for m in history):
                hooks.on_phase("validating")
                trainer.evaluate()  # the callback records it
        if not stop.reason:
            stop_point(hooks)
    except Stopped as exc:
        note_stop(exc, trainer, hooks, stop)
    state = trainer.state if trainer is not None else None
    losses = [m.train_loss for m in history if m.train_loss is not None]
    vals = [m.val_loss for m in history if m.val_loss is not None]
    result = TrainResult(
        status=stop.reason or "succeeded",
        global_step=state.global_step if state else 0,
        total_steps=state.max_steps if state else 0,
        resumed_from=resume,
        history=history,
        final_train_loss=(losses or [e["loss"] for e in (state.log_history if state else []) if "loss" in e] or [None])[
            -1
        ],
        seconds=time.perf_counter() - started,
    )
    if stop.reason:
        return result
    result.final_val_loss = vals[-1] if vals else None
    hooks.on_phase("saving")
    adapter_dir = Path(config.output_dir) / "adapter"
    if trainer.args.should_save:  # the trained adapter only, not TRL's frozen reference copy
        trainer.model.save_pretrained(str(adapter_dir), safe_serialization=True, selected_adapters=["default"])
    result.adapter_dir = str(adapter_dir)
    hooks.on_log(f"saved adapter to {adapter_dir}")
    return result
