"""A real run of the shipped SmolLM2-135M-Instruct on the demo dataset, on CPU (24 steps): its loss falls, and its
adapter loads with plain peft and changes what the model writes, towards the house style."""

from __future__ import annotations

import pytest

from apps.demo.generator import check_reply, generate_examples
from apps.runs import base_models, launching
from apps.runs.models import RunStatus
from apps.runs.tasks import train_run
from tests.factories import make_dataset_version

pytestmark = pytest.mark.django_db


def test_the_shipped_model_learns_the_house_style_and_its_adapter_changes_its_output(team, shipped_model_dir):
    import torch
    from peft import PeftModel

    from worker.models import load_model, load_tokenizer

    base_model = base_models.ensure_shipped_base_model()
    assert base_model.name == "smollm2-135m-instruct" and base_model.has_chat_template
    assert 100_000_000 < base_model.parameter_count < 200_000_000 and base_model.context_length >= 2048
    demo = [e.messages for e in generate_examples(110, seed=3)]
    version = make_dataset_version(team.project, {"train": demo[:96], "val": demo[96:104], "test": demo[104:]})
    run = launching.launch_run(
        project=team.project,
        dataset_version=version,
        base_model=base_model,
        overrides={"max_steps": 24, "batch_size": 4, "learning_rate": 0.002, "max_seq_length": 192, "save_steps": 100},
    )
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    run.refresh_from_db()
    losses = list(run.metrics.filter(train_loss__isnull=False).order_by("step").values_list("train_loss", flat=True))
    assert len(losses) == 24
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    assert run.final_val_loss is not None and run.final_val_loss < losses[0]

    tokenizer = load_tokenizer(str(shipped_model_dir))
    model = PeftModel.from_pretrained(load_model(str(shipped_model_dir), device="cpu"), run.adapter_path).eval()
    held_out = demo[104]  # a test example: never trained on
    prompt = tokenizer.apply_chat_template(held_out[:-1], add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        tuned = tokenizer.decode(
            model.generate(prompt, max_new_tokens=48, do_sample=False)[0, prompt.shape[1] :], skip_special_tokens=True
        )
        with model.disable_adapter():
            base = tokenizer.decode(
                model.generate(prompt, max_new_tokens=48, do_sample=False)[0, prompt.shape[1] :],
                skip_special_tokens=True,
            )
    assert tuned != base
    user = held_out[0]["content"]
    assert check_reply(tuned, user).greets_by_name, tuned  # "Hi <name>," as the house style says
    assert not check_reply(base, user).greets_by_name, base
