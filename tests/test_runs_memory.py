"""A run's memory at launch: the mode (full-precision or 4-bit base, layers recomputed or not) chosen in presets
and the form, the card (GPU tier) the estimate picks or the user asks for, refusals with the numbers, and the
4-bit base refused where no worker has a GPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.utils import timezone

from apps.fleet.models import WorkerBeat
from apps.runs import base_models, launching
from apps.runs.models import BaseModel, Run
from apps.runs.selectors import run_queue
from tests.runs_setup import small_version
from worker.memory import Shape

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db


def launch(team, version, model, **kw):
    return launching.launch_run(project=team.project, dataset_version=version, base_model=model, **kw)


def _model_from_config(name: str, config: str, **fields) -> BaseModel:
    """A registry row of a real model's shape (no weights needed to launch: the estimate reads the shape)."""
    shape = Shape.from_config(json.loads((REPO / "bench" / "model_configs" / config / "config.json").read_text()))
    return BaseModel.objects.create(
        name=name, source_kind="local", source=f"/models/{name}", parameter_count=shape.parameters(),
        context_length=8192, shape=shape.to_dict(), **fields,
    )  # fmt: skip


def _gpu_worker(queues=("gpu",), gpus=1):
    now = timezone.now()
    return WorkerBeat.objects.create(
        hostname=f"w{gpus}", queues=list(queues), gpu_count=gpus, started_at=now, beat_at=now
    )


def test_a_4_bit_base_is_refused_at_launch_where_no_worker_has_a_gpu_and_accepted_where_one_has(team):
    model = _model_from_config("qwen-half", "qwen2.5-0.5b")
    version = small_version(team.project)
    _gpu_worker(gpus=0)  # a CPU worker serves the default queue
    with pytest.raises(launching.LaunchError) as caught:
        launch(team, version, model, overrides={"memory_mode": "qlora"})
    assert "A 4-bit base needs an NVIDIA GPU" in caught.value.errors["memory_mode"]
    assert not Run.objects.exists()
    _gpu_worker(gpus=1)
    run = launch(team, version, model, overrides={"memory_mode": "qlora"})
    assert run.hyperparameters["memory_mode"] == "qlora" and run.estimate["memory_device"] == "GPU"


def test_an_8b_model_goes_to_the_smallest_card_that_holds_it_recomputing_layers_only_when_needed(team):
    llama = _model_from_config("llama-8b", "llama-3.1-8b", min_gpu_gb=16)
    version = small_version(team.project)
    long_rows = launch(team, version, llama, preset="balanced", overrides={"max_seq_length": 2048})
    four_bit = launch(team, version, llama, preset="balanced", overrides={"memory_mode": "qlora"})
    small = {"memory_mode": "qlora", "batch_size": 1, "max_seq_length": 256}
    small_batch = launch(team, version, llama, preset="balanced", overrides=small)
    # 16 GB of bf16 weights and 16k tokens' logits: no 24 GB card holds it, even recomputing layers
    assert long_rows.estimate["gpu_gb"] == 48 and run_queue(long_rows.pk) == "gpu-48g"
    assert long_rows.estimate["fit"].startswith("fits 48 GB with")
    # the 4-bit base fits a 24 GB card, recomputing layers; a small batch fits it without
    assert four_bit.estimate["gpu_gb"] == 24 and run_queue(four_bit.pk) == "gpu-24g"
    assert four_bit.hyperparameters["gradient_checkpointing"] is True
    assert four_bit.estimate["memory_mb"] < 24 * 1024
    assert small_batch.estimate["gpu_gb"] == 24 and small_batch.hyperparameters["gradient_checkpointing"] is False


def test_a_run_that_cannot_fit_the_card_asked_for_is_refused_with_the_numbers(team):
    llama = _model_from_config("llama-8b", "llama-3.1-8b")
    version = small_version(team.project)
    with pytest.raises(launching.LaunchError) as caught:
        launch(team, version, llama, preset="balanced", overrides={"gpu_gb": 24, "gradient_checkpointing": "off"})
    message = caught.value.errors["gpu_gb"]
    assert message.startswith("This run needs about ") and "does not fit a 24 GB card" in message
    assert "GB short" in message and "4-bit base" in message
    assert not Run.objects.exists()
    # the same run with layers recomputed ("when the card needs it", the preset's choice) fits
    run = launch(team, version, llama, preset="balanced", overrides={"gpu_gb": 24, "batch_size": 2})
    assert run.hyperparameters["gradient_checkpointing"] is True and run.estimate["queue"] == "gpu-24g"


def test_the_compact_preset_trains_a_4_bit_base_with_layers_recomputed(team):
    llama = _model_from_config("llama-8b", "llama-3.1-8b", min_gpu_gb=16)
    run = launch(team, small_version(team.project), llama, preset="compact")  # 8 examples of up to 512 tokens
    assert run.hyperparameters["memory_mode"] == "qlora" and run.hyperparameters["gradient_checkpointing"] is True
    assert run.estimate["gpu_gb"] == 24


@pytest.fixture
def eight_b_folder(tmp_path, settings, tiny_model_dir) -> Path:
    """A folder holding an 8B model's config.json (Llama 3.1 8B), a tokenizer and a placeholder weights file."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "llama-3.1-8b-instruct"
    folder.mkdir()
    shutil.copy(REPO / "bench" / "model_configs" / "llama-3.1-8b" / "config.json", folder)
    for path in Path(tiny_model_dir).iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(path, folder)
    save_file({"placeholder": torch.zeros(1)}, str(folder / "model.safetensors"))
    settings.FTSTUDIO_MODEL_ROOTS = [*settings.FTSTUDIO_MODEL_ROOTS, tmp_path]
    return folder


def test_the_run_form_for_an_8b_model_from_a_folder_says_which_mode_fits_which_card(team, eight_b_folder):
    model = base_models.register_base_model(name="llama-8b", source_kind="local", source=str(eight_b_folder))
    assert model.parameter_count == 8_030_261_248 and model.shape["hidden_size"] == 4096
    version = small_version(team.project)
    client = team.client("pm")
    url = f"/p/{team.project.slug}/runs/estimate/"
    choices = {"dataset_version": version.pk, "base_model": model.pk, "preset": "compact", "gpu_gb": 24}
    page = client.get(url, choices, headers={"HX-Request": "true"}).content.decode()
    assert "Needs about " in page and "of GPU memory (4-bit base, layers recomputed): fits 24 GB with " in page
    table = page[page.index('id="estimate-fit"') :]
    assert "Full-precision base</td>" in table and "4-bit base, layers recomputed</td>" in table
    assert "does not fit 24 GB" in table and "fits 24 GB with" in table and "fits 80 GB with" in table
    refused = client.get(
        url, {**choices, "preset": "balanced", "memory_mode": "lora", "gradient_checkpointing": "off"},
        headers={"HX-Request": "true"},
    ).content.decode()  # fmt: skip
    assert "This run needs about " in refused and "does not fit a 24 GB card" in refused
    assert 'id="estimate-fit"' in refused  # beside the refusal: which mode would fit
    response = client.post(
        f"/p/{team.project.slug}/runs/new/",
        {**choices, "preset": "balanced", "gradient_checkpointing": "off", "launch_without_prompt": "on"},
    )
    assert response.status_code == 200 and "does not fit a 24 GB card" in response.content.decode()
    assert not Run.objects.exists()
