"""worker/data.py and worker/train.py on the tiny random Llama: seconds each, no Django."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from worker.data import IGNORE_INDEX, DataError, PackedRowsCollator, encode_conversation, padded_collator
from worker.models import load_model, load_tokenizer
from worker.train import Hooks, TrainConfig, train


def conv(i: int) -> list[dict]:
    return [
        {"role": "system", "content": "You are Lumo's support desk."},
        {"role": "user", "content": f"Where is order #{100 + i}? " + "Please check. " * (i % 5)},
        {"role": "assistant", "content": f"Hi Ann,\nOrder #{100 + i} ships today.\nWarm regards"},
    ]


TRAIN = [conv(i) for i in range(12)]
VAL = [conv(50), conv(51)]


def config(tiny_model_dir, tmp_path, **kw) -> TrainConfig:
    values = {"max_steps": 6, "batch_size": 4, "save_steps": 2, "learning_rate": 5e-3, "max_seq_length": 128, "seed": 7}
    return TrainConfig(model_dir=str(tiny_model_dir), output_dir=str(tmp_path / "run"), **{**values, **kw})


def test_loss_is_only_on_the_assistant_turn(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    messages = conv(3)
    feature = encode_conversation(tokenizer, messages, max_length=256)
    learned = tokenizer.decode(
        [t for t, label in zip(feature.input_ids, feature.labels, strict=True) if label != IGNORE_INDEX]
    )
    assert learned.startswith(messages[-1]["content"])
    assert "Where is order" not in learned and "support desk" not in learned
    assert learned[len(messages[-1]["content"]) :].strip() in {tokenizer.eos_token, "<|im_end|>"}


def test_a_conversation_without_an_assistant_turn_is_refused_with_the_reason(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    with pytest.raises(DataError, match="no assistant turn"):
        encode_conversation(tokenizer, [{"role": "user", "content": "hello"}], max_length=64)


@pytest.mark.parametrize("rows_wanted", [1, 2])
def test_padding_free_batches_keep_examples_apart_and_give_the_padded_loss(tiny_model_dir, rows_wanted):
    """Packed rows hold several examples end to end; attention must stay inside each example, so each
    example's logits equal those it gets alone, and the loss equals the padded batch's loss, whether the batch
    is one row or spread over two rows (the shorter one ending in filler)."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), device="cpu").eval()
    features = [encode_conversation(tokenizer, conv(i), 128) for i in (0, 4, 2, 1)]
    rows = [{"input_ids": f.input_ids, "labels": f.labels} for f in features]
    total = sum(len(f.input_ids) for f in features)
    packed = PackedRowsCollator(10_000 if rows_wanted == 1 else -(-total // 2))(rows)
    padded = padded_collator(tokenizer)([dict(r) for r in rows])
    assert packed.pop("real_tokens") == total
    assert packed["input_ids"].shape[0] == rows_wanted
    assert padded["input_ids"].numel() > packed["input_ids"].numel()  # padding was needed, packing needs less
    with torch.no_grad():
        out = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], labels=packed["labels"], use_cache=False
        )
        found = 0
        for f in features:
            alone = model(input_ids=torch.tensor([f.input_ids]), use_cache=False).logits[0]
            n = len(f.input_ids)
            for r in range(packed["input_ids"].shape[0]):  # find the example in its row
                row = packed["input_ids"][r].tolist()
                starts = [
                    k
                    for k in range(len(row) - n + 1)
                    if row[k : k + n] == f.input_ids and packed["position_ids"][r, k] == 0
                ]
                if starts:
                    k = starts[0]
                    assert torch.allclose(out.logits[r, k : k + n], alone, atol=1e-4)
                    found += 1
                    break
        assert found == len(features)
        padded_loss = model(
            input_ids=padded["input_ids"],
            attention_mask=padded["attention_mask"],
            labels=padded["labels"],
            use_cache=False,
        ).loss
    assert out.loss.item() == pytest.approx(padded_loss.item(), rel=1e-4)


def test_training_saves_a_standard_peft_adapter_with_falling_loss_and_val_loss(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    progress, metrics = [], []
    result = train(
        config(tiny_model_dir, tmp_path, max_steps=8),
        TRAIN,
        VAL,
        Hooks(on_progress=progress.append, on_metric=metrics.append),
    )
    assert result.status == "succeeded" and result.global_step == 8 == result.total_steps
    losses = [m.train_loss for m in metrics if m.train_loss is not None]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert result.final_val_loss is not None and any(m.val_loss is not None for m in metrics)
    assert progress[-1].step == 8 and progress[-1].tokens_per_second > 0
    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (adapter / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), use_safetensors=True)
    tuned = PeftModel.from_pretrained(base, str(adapter))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in tuned.named_parameters())


def test_cancel_stops_within_one_step_and_leaves_no_adapter(tiny_model_dir, tmp_path):
    steps = []
    hooks = Hooks(on_progress=lambda p: steps.append(p.step), should_cancel=lambda: bool(steps) and steps[-1] >= 3)
    result = train(config(tiny_model_dir, tmp_path, max_steps=10), TRAIN, VAL, hooks)
    assert result.status == "cancelled" and result.global_step == 3
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_resumed_run_continues_from_its_checkpoint_to_the_same_result(tiny_model_dir, tmp_path):
    """Stopped after step 5 (last checkpoint: step 4), then resumed: it trains steps 5-6 only, and ends at the
    same total steps and (optimizer and scheduler state restored) the same validation loss as a run that was
    never interrupted."""
    straight = train(config(tiny_model_dir, tmp_path / "a"), TRAIN, VAL)

    seen = []
    first = train(
        config(tiny_model_dir, tmp_path / "b"),
        TRAIN,
        VAL,
        Hooks(on_progress=lambda p: seen.append(p.step), should_cancel=lambda: bool(seen) and seen[-1] >= 5),
    )
    assert first.status == "cancelled"
    assert sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").iterdir())[-1] == "checkpoint-4"
    # a worker killed while writing the next checkpoint leaves a folder without trainer_state.json (written last)
    checkpoints = tmp_path / "b" / "run" / "checkpoints"
    shutil.copytree(checkpoints / "checkpoint-4", checkpoints / "checkpoint-6")
    (checkpoints / "checkpoint-6" / "trainer_state.json").unlink()
    (checkpoints / "checkpoint-6" / "optimizer.pt").write_bytes(b"cut off")
    resumed = train(config(tiny_model_dir, tmp_path / "b"), TRAIN, VAL)
    assert resumed.resumed_from.endswith("checkpoint-4")  # the cut-off one was skipped
    assert resumed.status == "succeeded" and resumed.global_step == straight.global_step == 6
    assert [m.step for m in resumed.history if m.train_loss is not None] == [5, 6]
    assert resumed.history[0].learning_rate == pytest.approx(
        next(m.learning_rate for m in straight.history if m.step == 5 and m.train_loss is not None)
    )
    assert resumed.final_val_loss == pytest.approx(straight.final_val_loss, rel=1e-3)
    assert (checkpoints / "checkpoint-6" / "trainer_state.json").is_file()  # saved again, whole


def test_a_run_resumed_from_its_final_checkpoint_finishes_without_training_another_step(tiny_model_dir, tmp_path):
    """`Trainer` saves checkpoint-4 before the final validation; a worker killed during that validation leaves it
    and no adapter. Resuming validates and saves the adapter from checkpoint-4: no step 5, no checkpoint-5."""
    first = train(config(tiny_model_dir, tmp_path, max_steps=4), TRAIN, VAL)
    shutil.rmtree(tmp_path / "run" / "adapter")  # killed after checkpoint-4, before the adapter was saved
    phases = []
    resumed = train(config(tiny_model_dir, tmp_path, max_steps=4), TRAIN, VAL, Hooks(on_phase=phases.append))
    assert resumed.status == "succeeded" and resumed.resumed_from.endswith("checkpoint-4")
    assert resumed.global_step == resumed.total_steps == 4
    assert [m for m in resumed.history if m.train_loss is not None] == []  # nothing trained again
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())[-1] == "checkpoint-4"
    assert resumed.final_val_loss == pytest.approx(first.final_val_loss, rel=1e-4)  # the trained weights, restored
    assert resumed.final_train_loss == pytest.approx(first.final_train_loss)
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert phases == ["loading", "validating", "saving"]


def test_cancel_asked_while_the_model_loads_stops_before_the_first_step(tiny_model_dir, tmp_path):
    asked = []
    hooks = Hooks(should_cancel=lambda: asked.append(1) or len(asked) >= 2)  # asked once loading has begun
    result = train(config(tiny_model_dir, tmp_path), TRAIN, VAL, hooks)
    assert result.status == "cancelled" and result.global_step == 0 and result.history == []
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "adapter").exists()


def test_cancel_asked_as_a_validation_pass_starts_stops_within_one_batch(tiny_model_dir, tmp_path, monkeypatch):
    """12 examples in batches of 4: step 3 ends the epoch and validates (2 batches of 4). Cancel arrives as step 3's
    loss is logged, just before that pass: the pass stops after its first batch and no step 4 is trained."""
    from transformers import TrainerCallback

    import worker.train

    cancel, batches = [], []

    class CountValidationBatches(TrainerCallback):
        def on_prediction_step(self, args, state, control, **kwargs):
            batches.append(state.global_step)

    build_trainer = worker.train.build_trainer
    monkeypatch.setattr(
        worker.train,
        "build_trainer",
        lambda *a, callbacks=(), **kw: build_trainer(*a, callbacks=[CountValidationBatches(), *callbacks], **kw),
    )

    def on_metric(m):
        if m.step == 3 and m.train_loss is not None:
            cancel.append(True)

    result = train(
        config(tiny_model_dir, tmp_path, max_steps=6, batch_size=4),
        TRAIN,
        [conv(50 + i) for i in range(8)],
        Hooks(on_metric=on_metric, should_cancel=lambda: bool(cancel)),
    )
    assert result.status == "cancelled" and result.global_step == 3
    assert batches == [3]  # one validation batch, not the whole pass
    assert not any(m.val_loss is not None for m in result.history)
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_pause_asked_as_a_validation_pass_starts_keeps_that_step_in_a_checkpoint(tiny_model_dir, tmp_path):
    """A worker shutting down just as step 3's loss is logged (after the step-end check, before the epoch's
    validation): the pass finishes, checkpoint-3 is written and training stops, so the next call resumes at
    step 4 instead of starting over (a deploy during validation once threw the run's progress away)."""
    pause = []

    def on_metric(m):
        if m.step == 3 and m.train_loss is not None:
            pause.append(True)

    val = [conv(50 + i) for i in range(8)]
    paused = train(
        config(tiny_model_dir, tmp_path, save_steps=100),
        TRAIN,
        val,
        Hooks(on_metric=on_metric, should_pause=lambda: bool(pause)),
    )
    assert paused.status == "paused" and paused.global_step == 3
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file()
    assert not (tmp_path / "run" / "adapter").exists()
    finished = train(config(tiny_model_dir, tmp_path, save_steps=100), TRAIN, val)
    assert finished.status == "succeeded" and finished.resumed_from.endswith("checkpoint-3")
    assert [m.step for m in finished.history if m.train_loss is not None] == [4, 5, 6]


def test_a_pause_stops_at_a_checkpoint_of_that_step_and_a_second_call_finishes_the_run(tiny_model_dir, tmp_path):
    """A worker shutting down: it stops at the end of step 3 with checkpoint-3 (saves are every 2 steps), without
    validating; the next call resumes from checkpoint-3 and trains steps 4-6 only."""
    seen = []
    paused = train(
        config(tiny_model_dir, tmp_path),
        TRAIN,
        VAL,
        Hooks(on_progress=lambda p: seen.append(p.step), should_pause=lambda: bool(seen) and seen[-1] >= 3),
    )
    assert paused.status == "paused" and paused.global_step == 3
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file()
    assert not (tmp_path / "run" / "adapter").exists() and not any(m.val_loss is not None for m in paused.history)
    finished = train(config(tiny_model_dir, tmp_path), TRAIN, VAL)
    assert finished.status == "succeeded" and finished.resumed_from.endswith("checkpoint-3")
    assert [m.step for m in finished.history if m.train_loss is not None] == [4, 5, 6]
