"""LoRA fine-tuning with Hugging Face `Trainer` + `peft`. No Django here.

Reads top to bottom: one `TrainConfig`, `train()` loads the model, adds LoRA, encodes the conversations
(loss only on assistant turns, padding-free batches), and runs `Trainer` with one callback that reports
progress, phases and metrics, and stops within one training step or one validation batch when cancel is
asked (cancel is also checked between the stages of loading). A pause (the worker is shutting down) stops
at the next step end with a checkpoint. Checkpoints (adapter + optimizer + scheduler + RNG state) go to
``output_dir/checkpoints`` every ``save_steps``; calling `train()` again with the same ``output_dir`` resumes
from the last one, and a checkpoint at the final step is finished (validated, adapter saved) without
training again. The adapter is saved in standard PEFT format in ``output_dir/adapter``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from worker.data import (
    PACK_ROW_TOKENS,
    PackedRowsCollator,
    encode_conversations,
    padded_collator,
    token_count,
)

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class TrainConfig:
    model_dir: str
    output_dir: str
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    max_seq_length: int = 256
    seed: int = 42
    save_steps: int = 20
    logging_steps: int = 1
    packing: bool = True  # padding-free batches; False pads each batch to its longest example
    pack_row_tokens: int = PACK_ROW_TOKENS  # tokens per packed row (see worker.data.PackedRowsCollator)
    device: str = ""  # "" picks cuda when present

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: float
    tokens_per_second: float | None = None


@dataclass
class Metric:
    step: int
    epoch: float
    train_loss: float | None = None
    val_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None


@dataclass
class TrainResult:
    status: str  # "succeeded" | "cancelled" | "paused" (stopped at a checkpoint: call train() again to go on)
    global_step: int
    total_steps: int
    adapter_dir: str = ""
    final_train_loss: float | None = None
    final_val_loss: float | None = None
    tokens_per_second: float | None = None
    trained_tokens: int = 0
    resumed_from: str = ""
    seconds: float = 0.0
    history: list[Metric] = field(default_factory=list)


class Hooks:
    """What the caller (a Celery task, a test, the benchmark) hears from training. All optional.

    ``should_cancel``: stop now, save nothing. ``should_pause``: stop at the next step end with a checkpoint
    (a worker shutting down). ``on_phase``: "loading", "training", "validating", "saving".
    """

    def __init__(self, on_progress: Callable[[Progress], None] | None = None,
                 on_metric: Callable[[Metric], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 on_log: Callable[[str], None] | None = None,
                 on_checkpoint: Callable[[str], None] | None = None,
                 on_phase: Callable[[str], None] | None = None,
                 should_pause: Callable[[], bool] | None = None) -> None:
        self.on_checkpoint = on_checkpoint or (lambda path: None)
        self.on_progress = on_progress or (lambda p: None)
        self.on_metric = on_metric or (lambda m: None)
        self.should_cancel = should_cancel or (lambda: False)
        self.on_log = on_log or (lambda line: None)
        self.on_phase = on_phase or (lambda phase: None)
        self.should_pause = should_pause or (lambda: False)


class Stopped(Exception):
    """Raised between two units of work (a loading stage, a validation batch) when cancel or a pause is asked."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def stop_point(hooks: Hooks) -> None:
    if hooks.should_cancel():
        raise Stopped("cancelled")
    if hooks.should_pause():
        raise Stopped("paused")


def steps_per_epoch(examples: int, batch_size: int, grad_accum: int) -> int:
    return max(1, math.ceil(math.ceil(examples / batch_size) / grad_accum))


def _callback(hooks: Hooks, history: list[Metric], stop: dict):
    from transformers import TrainerCallback

    class RunCallback(TrainerCallback):
        """Progress each step, metrics each log, phases; cancel within one step or one validation batch."""

        def __init__(self):
            self.started, self.start_tokens, self.rate, self.phase = time.perf_counter(), 0, None, ""

        def _phase(self, phase: str) -> None:
            if phase != self.phase:
                self.phase = phase
                hooks.on_phase(phase)

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()
            self.start_tokens = state.num_input_tokens_seen
            self._phase("training")
            hooks.on_log(f"training: step {state.global_step} of {state.max_steps}")
            hooks.on_progress(Progress(state.global_step, state.max_steps, state.epoch or 0.0))

        def on_step_begin(self, args, state, control, **kwargs):
            self._phase("training")

        def on_step_end(self, args, state, control, **kwargs):
            elapsed = time.perf_counter() - self.started
            if elapsed > 0 and state.num_input_tokens_seen > self.start_tokens:
                self.rate = (state.num_input_tokens_seen - self.start_tokens) / elapsed
            hooks.on_progress(Progress(state.global_step, state.max_steps, state.epoch or 0.0, self.rate))
            if hooks.should_cancel():
                stop["reason"] = "cancelled"
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False
                hooks.on_log(f"cancel requested: stopping at step {state.global_step}")
            elif hooks.should_pause():
                stop["reason"] = "paused"
                control.should_training_stop = True
                control.should_save = True  # a checkpoint at this step: the next attempt resumes here
                control.should_evaluate = False
                hooks.on_log(f"worker shutting down: checkpoint at step {state.global_step}, then stopping")
            return control

        def on_epoch_end(self, args, state, control, **kwargs):
            if stop["reason"]:  # the epoch end would switch evaluation back on: a stopped run does not validate
                control.should_evaluate = False
            return control

        def on_prediction_step(self, args, state, control, **kwargs):
            self._phase("validating")
            stop_point(hooks)  # within one validation batch

        def on_save(self, args, state, control, **kwargs):
            path = str(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            hooks.on_checkpoint(path)
            hooks.on_log(f"checkpoint saved at step {state.global_step}")

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs and "eval_loss" not in logs:
                return
            metric = Metric(step=state.global_step, epoch=round(state.epoch or 0.0, 4), train_loss=logs.get("loss"),
                            val_loss=logs.get("eval_loss"), learning_rate=logs.get("learning_rate"),
                            tokens_per_second=self.rate if "loss" in logs else None)
            history.append(metric)
            hooks.on_metric(metric)
            hooks.on_log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in {"step": state.global_step, **logs}.items()))

    return RunCallback()


def build_trainer(config: TrainConfig, train_conversations: list[list[dict]], val_conversations: list[list[dict]],
                  callbacks: list | None = None, between: Callable[[], None] | None = None):
    """The model with LoRA, the encoded splits and a configured `Trainer` (the benchmark reuses it).

    ``between`` is called between the stages of loading (tokenizer, weights, LoRA, encoding): it may raise
    `Stopped` so that cancel is seen while a model loads."""
    between = between or (lambda: None)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

    from worker.models import load_model, load_tokenizer, pick_device

    set_seed(config.seed)
    device = config.device or pick_device()
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    tokenizer = load_tokenizer(config.model_dir)
    between()
    model = load_model(config.model_dir, dtype=torch.bfloat16 if bf16 else torch.float32, device=device)
    model.config.use_cache = False
    between()
    lora = LoraConfig(task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=list(config.target_modules))
    model = get_peft_model(model, lora)

    train_features = encode_conversations(tokenizer, train_conversations, config.max_seq_length)
    val_features = encode_conversations(tokenizer, val_conversations, config.max_seq_length)
    between()
    if not train_features:
        raise ValueError("No training example has an assistant turn within max_seq_length tokens.")

    args = TrainingArguments(
        output_dir=str(Path(config.output_dir) / "checkpoints"),
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, num_train_epochs=config.epochs, max_steps=config.max_steps,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler, warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay, seed=config.seed, data_seed=config.seed,
        logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        eval_strategy="epoch" if val_features else "no", bf16=bf16, use_cpu=device == "cpu",
        group_by_length=not config.packing, remove_unused_columns=False, report_to="none", disable_tqdm=True,
        include_num_input_tokens_seen="no" if config.packing else "non_padding", dataloader_num_workers=0,
    )
    collator = PackedRowsCollator(config.pack_row_tokens) if config.packing else padded_collator(tokenizer)
    trainer_class = _packed_trainer_class() if config.packing else Trainer
    trainer = trainer_class(model=model, args=args, train_dataset=train_features, eval_dataset=val_features or None,
                            data_collator=collator, callbacks=callbacks or [])
    trainer.remove_callback(PrinterCallback)  # progress goes through our callback, not stdout
    return trainer, tokenizer, train_features, val_features


# Causal LMs whose logits are exactly ``lm_head(last_hidden_state)`` (no soft-capping or logit scale), so the
# loss may compute logits only where a label is learned (`labelled_loss`).
LABELLED_LOGITS_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def labelled_loss(model, inputs: dict, num_items_in_batch=None):
    """The causal-LM loss, computing the vocabulary logits only at the positions that predict a label.

    The model's own loss projects every position onto the whole vocabulary (49,152 entries for SmolLM2) and
    takes a softmax over it, then throws away all but the assistant tokens: with the demo's conversations
    about four positions in five are prompt. Here the decoder runs as usual, the hidden states that predict a
    label (shifted by one, as the model's loss does) are picked out, and only those go through ``lm_head`` and
    the cross-entropy: the same loss (sum over the labelled tokens ÷ ``num_items_in_batch``, or their mean) and
    the same gradients, without the lm_head matmul, the logits and their backward for the prompt. Returns None
    for a model not known to compute its logits that way (the caller falls back to the model's loss)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", "") not in LABELLED_LOGITS_MODEL_TYPES:
        return None
    labels = inputs["labels"]
    decoder_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = base.get_decoder()(**decoder_inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
    loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    if num_items_in_batch is None:
        return loss / keep.sum()
    return loss / torch.as_tensor(num_items_in_batch, device=loss.device)


def _packed_trainer_class():
    from transformers import Trainer

    class PackedTrainer(Trainer):
        """`Trainer` fed by `PackedRowsCollator`: counts the examples' real tokens as seen (not the filler), and
        computes the loss from the labelled positions' logits only (`labelled_loss`)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = None
            if "labels" in inputs and self.label_smoother is None and self.compute_loss_func is None:
                loss = labelled_loss(model, inputs, num_items_in_batch)
            if loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

        def _prepare_inputs(self, inputs):
            real = inputs.pop("real_tokens", None)
            if real is not None and self.model.training:
                import torch

                seen = self.accelerator.gather(torch.tensor([real], device=self.args.device)).sum()
                self.state.num_input_tokens_seen += int(seen)
            return super()._prepare_inputs(inputs)

    return PackedTrainer


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


def train(config: TrainConfig, train_conversations: list[list[dict]], val_conversations: list[list[dict]],
          hooks: Hooks | None = None) -> TrainResult:
    """Train (or resume) a LoRA adapter; returns what happened. Raises on errors the caller should record."""
    hooks = copy.copy(hooks or Hooks())
    report_phase, phase = hooks.on_phase, [""]

    def on_phase(name: str) -> None:  # each change once, whether train() or the callback sees it first
        if name != phase[0]:
            phase[0] = name
            report_phase(name)

    hooks.on_phase = on_phase
    history: list[Metric] = []
    stop = {"reason": ""}
    started = time.perf_counter()
    trainer, train_features, resume, output = None, [], "", None
    try:
        hooks.on_phase("loading")
        stop_point(hooks)
        trainer, _tokenizer, train_features, _val = build_trainer(
            config, train_conversations, val_conversations, callbacks=[_callback(hooks, history, stop)],
            between=lambda: stop_point(hooks))
        resume = last_checkpoint(config.output_dir)
        if resume and _is_final(resume):
            hooks.on_log(f"resuming from {resume}: the final step, so finishing without training")
            _load_final_checkpoint(trainer, resume)
        else:
            if resume:
                hooks.on_log(f"resuming from {resume}")
            output = trainer.train(resume_from_checkpoint=resume or None)
        final_val_loss = None
        if not stop["reason"] and trainer.eval_dataset is not None:
            evals = [m for m in history if m.val_loss is not None and m.step == trainer.state.global_step]
            if not evals:
                hooks.on_phase("validating")
                trainer.evaluate()  # the callback records it
                evals = [m for m in history if m.val_loss is not None]
            final_val_loss = evals[-1].val_loss
        if not stop["reason"]:
            stop_point(hooks)
    except Stopped as exc:
        stop["reason"] = exc.reason
        hooks.on_log(f"{exc.reason}: stopped" + (f" at step {trainer.state.global_step}" if trainer else " while loading"))
    state = trainer.state if trainer is not None else None
    result = TrainResult(status=stop["reason"] or "succeeded", global_step=state.global_step if state else 0,
                         total_steps=state.max_steps if state else 0, resumed_from=resume, history=history,
                         trained_tokens=token_count(train_features) if train_features else 0,
                         seconds=time.perf_counter() - started)
    losses = [m.train_loss for m in history if m.train_loss is not None]
    logged = [e["loss"] for e in (state.log_history if state else []) if "loss" in e]
    result.final_train_loss = (losses or logged or [output.training_loss if output else None])[-1]
    rates = [m.tokens_per_second for m in history if m.tokens_per_second]
    result.tokens_per_second = rates[-1] if rates else None
    if stop["reason"]:
        return result
    result.final_val_loss = final_val_loss
    hooks.on_phase("saving")
    adapter_dir = Path(config.output_dir) / "adapter"
    trainer.model.save_pretrained(str(adapter_dir), safe_serialization=True)
    result.adapter_dir = str(adapter_dir)
    hooks.on_log(f"saved adapter to {adapter_dir}")
    return result
