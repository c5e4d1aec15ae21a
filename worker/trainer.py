"""The pieces `worker.train.train` trains with: the callback that reports and stops (`RunCallback`), the loss on
labelled positions only, validation that resumes where it stopped, and the `Trainer` subclasses. No Django here."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from worker.train_config import (
    Hooks,
    Metric,
    Progress,
    Stopped,
)

log = logging.getLogger(__name__)

EPOCH_ADAPTERS_KEPT = 3


@dataclass
class StopState:
    """Why training stopped early, shared by `train()` and its callback: "", "cancelled" or "paused"."""

    reason: str = ""


class PhaseOnce:
    """Reports each change of phase once, whoever sees it first (`train()` or the callback)."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report, self.phase = report, ""

    def __call__(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.report(phase)


class RunCallback(TrainerCallback):
    """Progress each step, metrics each log, phases; cancel within one step or one validation batch.

    ``history`` collects every metric logged and ``stop`` records why training stopped; `train()` reads both."""

    def __init__(self, hooks: Hooks, history: list[Metric], stop: StopState, epochs_dir: str = "") -> None:
        self.hooks, self.history, self.stop, self.epochs_dir = hooks, history, stop, epochs_dir
        self.started, self.start_tokens, self.rate = time.perf_counter(), 0, None
        self._phase = PhaseOnce(hooks.on_phase)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.start_tokens = state.num_input_tokens_seen
        self._phase("training")
        self.hooks.on_log(f"training: step {state.global_step} of {state.max_steps}")
        self.hooks.on_progress(Progress(state.global_step, state.max_steps, state.epoch or 0.0))

    def on_step_begin(self, args, state, control, **kwargs):
        self._phase("training")

    def on_step_end(self, args, state, control, **kwargs):
        hooks = self.hooks
        elapsed = time.perf_counter() - self.started
        if elapsed > 0 and state.num_input_tokens_seen > self.start_tokens:
            self.rate = (state.num_input_tokens_seen - self.start_tokens) / elapsed
        hooks.on_progress(Progress(state.global_step, state.max_steps, state.epoch or 0.0, self.rate))
        if hooks.should_cancel():
            self.stop.reason = "cancelled"
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False
            hooks.on_log(f"cancel requested: stopping at step {state.global_step}")
        elif hooks.should_pause():
            self.stop.reason = "paused"
            control.should_training_stop = True
            control.should_save = True  # a checkpoint at this step: the next attempt resumes here
            control.should_evaluate = False
            hooks.on_log(f"worker shutting down: checkpoint at step {state.global_step}, then stopping")
        return control

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.stop.reason:  # the epoch end would switch evaluation back on: a stopped run does not validate
            control.should_evaluate = False
        elif self.epochs_dir and model is not None and args.should_save:
            save_epoch_adapter(model, Path(self.epochs_dir), state.global_step)
        return control

    def on_prediction_step(self, args, state, control, **kwargs):
        self._phase("validating")
        if self.hooks.should_cancel():  # within one validation batch
            raise Stopped("cancelled")
        if args.world_size == 1 and self.hooks.should_pause():  # the finished batches are kept (ValidationProgress)
            raise Stopped("paused")

    def on_evaluate(self, args, state, control, **kwargs):
        if not self.stop.reason and state.global_step < state.max_steps and self.hooks.should_pause():
            self.stop.reason = "paused"  # asked during the pass: keep this step in a checkpoint, then stop
            control.should_training_stop = True
            control.should_save = True
            self.hooks.on_log(f"worker shutting down: checkpoint at step {state.global_step}, then stopping")
        return control

    def on_save(self, args, state, control, **kwargs):
        path = str(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        self.hooks.on_checkpoint(path)
        self.hooks.on_log(f"checkpoint saved at step {state.global_step}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs and "eval_loss" not in logs:
            return
        metric = Metric(
            step=state.global_step,
            epoch=round(state.epoch or 0.0, 4),
            train_loss=logs.get("loss"),
            val_loss=logs.get("eval_loss"),
            learning_rate=logs.get("learning_rate"),
            tokens_per_second=self.rate if "loss" in logs else None,
            train_accuracy=logs.get("mean_token_accuracy"),
            val_accuracy=logs.get("eval_mean_token_accuracy"),
            **method_metrics(logs),
        )
        self.history.append(metric)
        self.hooks.on_metric(metric)
        self.hooks.on_log(
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in {"step": state.global_step, **logs}.items()
            )
        )


def method_metrics(logs: dict) -> dict:
    """What TRL's preference and reinforcement trainers log, as `Metric` fields (none for supervised logs):
    DPO's ``rewards/margins`` and, at validation, ``eval_rewards/accuracies``; GRPO's ``rewards/<grader>/mean``
    per grader and ``reward`` (the weighted total)."""
    margin = logs.get("rewards/margins", logs.get("eval_rewards/margins"))
    rewards = {  # a grader that gave no score in a step logs NaN: left out (JSON has no NaN)
        key.split("/")[1]: value
        for key, value in logs.items()
        if key.startswith("rewards/") and key.endswith("/mean") and key.count("/") == 2 and math.isfinite(value)
    }
    if rewards and math.isfinite(logs.get("reward", math.nan)):
        rewards["total"] = logs["reward"]
    return {
        "reward_margin": margin,
        "preference_accuracy": logs.get("eval_rewards/accuracies"),
        "rewards": rewards,
    }


# Causal LMs whose logits are exactly ``lm_head(last_hidden_state)`` (no soft-capping or logit scale), so the
# loss may compute logits only where a label is learned (`labelled_loss`).
LABELLED_LOGITS_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def save_epoch_adapter(model, folder: Path, step: int, keep: int = EPOCH_ADAPTERS_KEPT) -> None:
    """The adapter at an epoch end, as ``folder/step-<step>``; only the newest ``keep`` epochs stay."""
    model.save_pretrained(str(folder / f"step-{step}"), safe_serialization=True)
    saved = sorted((p for p in folder.glob("step-*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
    for old in saved[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def count_right(counts: list[int] | None, logits, targets) -> None:
    """Add the learnt tokens predicted right (argmax) and all learnt tokens to ``counts``."""
    if counts is not None:
        with torch.no_grad():
            counts[0] += int((logits.argmax(-1) == targets).sum())
            counts[1] += int(targets.numel())


def labelled_loss(model, inputs: dict, num_items_in_batch=None, counts: list[int] | None = None):
    """The causal-LM loss, computing the vocabulary logits only at the positions that predict a label.

    The model's own loss projects every position onto the whole vocabulary (49,152 entries for SmolLM2) and
    takes a softmax over it, then throws away all but the assistant tokens: with the demo's conversations
    about four positions in five are prompt. Here the decoder runs as usual, the hidden states that predict a
    label (shifted by one, as the model's loss does) are picked out, and only those go through ``lm_head`` and
    the cross-entropy: the same loss (sum over the labelled tokens ÷ ``num_items_in_batch``, or their mean) and
    the same gradients, without the lm_head matmul, the logits and their backward for the prompt. Returns None
    for a model not known to compute its logits that way (the caller falls back to the model's loss)."""
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
    count_right(counts, logits, targets[keep])
    if num_items_in_batch is None:
        return loss / keep.sum()
    return loss / torch.as_tensor(num_items_in_batch, device=loss.device)


class ValidationProgress:
    """The losses of the batches a validation pass (at one step) has finished, in ``validation-progress.json`` next
    to the checkpoints: a pass stopped by a shutdown is taken up at the next attempt, its finished batches not
    computed again. Removed when the pass ends."""

    def __init__(self, folder: str | Path, step: int) -> None:
        self.path, self.step = Path(folder) / "validation-progress.json", step
        self.done = self.losses_at(folder, step)
        self.replayed = 0

    @staticmethod
    def losses_at(folder: str | Path, step: int) -> list[float]:
        """The losses kept for a pass at ``step`` (empty when none was interrupted there)."""
        try:
            saved = json.loads((Path(folder) / "validation-progress.json").read_text())
        except (OSError, ValueError):
            return []
        return [float(x) for x in saved.get("losses", [])] if saved.get("step") == step else []

    def next(self) -> float | None:
        """The kept loss of the next batch, or None once the pass has gone past what was kept."""
        if self.replayed < len(self.done):
            self.replayed += 1
            return self.done[self.replayed - 1]
        return None

    def add(self, loss: float) -> None:
        self.done.append(loss)
        self.replayed = len(self.done)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps({"step": self.step, "losses": self.done}))
        os.replace(partial, self.path)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


class RunTrainer(Trainer):
    """`Trainer`, resuming under DDP on CPU too: transformers maps the optimizer state to ``args.device``, which is
    ``cpu:0`` in a gloo process group, a location `torch.load` refuses; it is loaded to the CPU instead. Counts the
    learnt tokens predicted right in each loss (training and validation apart) and logs their share with the loss
    (``mean_token_accuracy``, ``eval_mean_token_accuracy``; this process's batches under DDP). A validation pass of
    one process keeps its finished batches (`ValidationProgress`); batches replayed from it count no accuracy."""

    _validation: ValidationProgress | None = None

    def evaluate(self, *args, **kwargs):
        one_process = self.args.world_size == 1
        self._validation = ValidationProgress(self.args.output_dir, self.state.global_step) if one_process else None
        metrics = super().evaluate(*args, **kwargs)
        if self._validation is not None:
            self._validation.finish()
        self._validation = None
        return metrics

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        kept = self._validation.next() if self._validation is not None else None
        if kept is not None:  # finished before the last attempt stopped
            return torch.tensor(kept, device=self.args.device), None, None
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        if self._validation is not None and loss is not None:
            self._validation.add(float(loss.detach().float().mean()))
        return loss, logits, labels

    def token_counts(self, training: bool) -> list[int]:
        counts = self.__dict__.setdefault("_token_counts", {True: [0, 0], False: [0, 0]})
        return counts[training]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
        if logits is not None:  # Liger's fused cross-entropy returns none: no accuracy then
            targets = inputs["labels"][:, 1:]
            keep = targets != -100
            count_right(self.token_counts(model.training), logits[:, :-1][keep], targets[keep])
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        for key, training in (("loss", True), ("eval_loss", False)):
            counts = self.token_counts(training)
            if key in logs and counts[1]:
                logs["mean_token_accuracy" if training else "eval_mean_token_accuracy"] = counts[0] / counts[1]
                counts[:] = [0, 0]
        super().log(logs, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint):
        if not checkpoint or self.args.world_size == 1 or self.args.device.type != "cpu":
            return super()._load_optimizer_and_scheduler(checkpoint)
        load = torch.load

        def load_on_cpu(*args, **kwargs):
            if "map_location" in kwargs:
                kwargs["map_location"] = "cpu"
            return load(*args, **kwargs)

        torch.load = load_on_cpu
        try:
            return super()._load_optimizer_and_scheduler(checkpoint)
        finally:
            torch.load = load


class PackedTrainer(RunTrainer):
    """`Trainer` fed by `PackedRowsCollator`: counts the examples' real tokens as seen (not the filler), and
    computes the loss from the labelled positions' logits only (`labelled_loss`)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = None
        # Under DDP the forward must go through the wrapper (it prepares the gradients' all-reduce), so the
        # labelled-logits shortcut, which calls the decoder directly, is for one process only.
        one_process = self.accelerator.num_processes == 1
        shortcut = not self.args.use_liger_kernel  # Liger's fused linear cross-entropy never materialises logits
        if (
            one_process
            and shortcut
            and "labels" in inputs
            and self.label_smoother is None
            and self.compute_loss_func is None
        ):
            # the shortcut calls the decoder itself, outside the autocast accelerate wraps the model's forward in
            with torch.autocast(self.args.device.type, dtype=torch.bfloat16, enabled=bool(self.args.bf16)):
                loss = labelled_loss(model, inputs, num_items_in_batch, self.token_counts(model.training))
        if loss is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _prepare_inputs(self, inputs):
        real = inputs.pop("real_tokens", None)
        if real is not None and self.model.training:
            seen = self.accelerator.gather(torch.tensor([real], device=self.args.device)).sum()
            self.state.num_input_tokens_seen += int(seen)
        return super()._prepare_inputs(inputs)
