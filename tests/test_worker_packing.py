"""Packing stays leak-free on the pinned versions: in a packed row, attention is kept inside each example
only because transformers reads example boundaries from the restarting position ids and the model runs
without a KV cache. With the cache on, a packed example's logits moved by 28.5. These tests feed the model
exactly as training does (the Trainer built by ``worker.train.build_trainer`` calls ``model(**batch)``)."""

from __future__ import annotations

import pytest
import torch

from tests.test_worker_train import TRAIN, VAL, config
from worker.train import build_trainer


def logits_packed_and_alone(trainer, features):
    model = trainer.model.eval()
    batch = trainer.data_collator([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
    batch.pop("real_tokens")
    assert batch["input_ids"].shape[0] == 1, "the examples should share one packed row"
    with torch.no_grad():
        packed = model(**batch).logits[0]  # how Trainer.compute_loss calls it: no use_cache argument
        alone = [model(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in features]
    return packed, alone


def test_an_example_packed_after_another_has_the_logits_it_has_alone(tiny_model_dir, tmp_path):
    trainer, _, train_features, _ = build_trainer(config(tiny_model_dir, tmp_path), TRAIN[:3], VAL)
    assert trainer.model.config.use_cache is False
    features = train_features[:3]
    packed, alone = logits_packed_and_alone(trainer, features)
    at = 0
    for feature, expected in zip(features, alone, strict=True):
        n = len(feature["input_ids"])
        assert torch.allclose(packed[at : at + n], expected, atol=1e-4), float(
            (packed[at : at + n] - expected).abs().max()
        )
        at += n


def test_with_the_cache_on_packed_examples_would_see_each_other(tiny_model_dir, tmp_path):
    """The guard above can fail: turn the cache on and the second example's logits move."""
    trainer, _, train_features, _ = build_trainer(config(tiny_model_dir, tmp_path), TRAIN[:2], VAL)
    trainer.model.config.use_cache = True
    trainer.model.base_model.model.config.use_cache = True
    features = train_features[:2]
    packed, alone = logits_packed_and_alone(trainer, features)
    first = len(features[0]["input_ids"])
    second = packed[first : first + len(features[1]["input_ids"])]
    assert not torch.allclose(second, alone[1], atol=1e-4)


def test_the_loss_from_the_labelled_positions_alone_is_the_models_loss_with_the_same_gradients(
    tiny_model_dir, tmp_path
):
    """Training computes vocabulary logits only where a label is learned (`worker.trainer.labelled_loss`): the loss
    and the LoRA gradients must equal those of the model's own loss over every position, and lm_head must see
    only the labelled positions (not the prompt, not the filler)."""
    trainer, _, train_features, _ = build_trainer(config(tiny_model_dir, tmp_path, pack_row_tokens=64), TRAIN[:6], VAL)
    model = trainer.model.eval()  # dropout off: both passes see the same function
    batch = trainer.data_collator([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in train_features])
    batch.pop("real_tokens")
    assert batch["input_ids"].shape[0] > 1, "several rows, the shorter ending in filler"
    learned = int((batch["labels"] != -100).sum())
    assert learned < batch["input_ids"].numel() // 2

    def loss_and_grads(compute):
        model.zero_grad(set_to_none=True)
        loss = compute()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    seen = []
    hook = (
        model.get_base_model()
        .get_output_embeddings()
        .register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:-1].numel()))
    )
    try:
        ours, our_grads = loss_and_grads(lambda: trainer.compute_loss(model, dict(batch), num_items_in_batch=learned))
        assert seen == [learned]
        full, full_grads = loss_and_grads(lambda: model(**batch, num_items_in_batch=learned).loss)
        assert seen[1] == batch["input_ids"].numel()
    finally:
        hook.remove()
    assert ours == pytest.approx(full, rel=1e-5)
    assert our_grads.keys() == full_grads.keys() and our_grads
    for name, grad in our_grads.items():
        assert torch.allclose(grad, full_grads[name], atol=1e-6, rtol=1e-4), name
    ours_mean, _ = loss_and_grads(lambda: trainer.compute_loss(model, dict(batch)))
    assert ours_mean == pytest.approx(full, rel=1e-5)  # without num_items_in_batch: the mean over the same tokens
