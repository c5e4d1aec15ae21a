"""Shared by the runs tests: the tiny model registered as a base model, a small frozen dataset version."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.runs.models import BaseModel
from tests.factories import conversation, make_dataset_version

FAST = {"max_steps": 4, "batch_size": 4, "save_steps": 2, "learning_rate": 0.005, "max_seq_length": 128}


@pytest.fixture
def tiny_base_model(settings, tiny_model_dir) -> BaseModel:
    settings.FTSTUDIO_MODEL_ROOTS = [*settings.FTSTUDIO_MODEL_ROOTS, Path(tiny_model_dir).parent]
    from apps.runs.base_models import register_base_model

    return register_base_model(
        name="tiny-llama", source_kind="local", source=str(tiny_model_dir), display_name="Tiny Llama"
    )


def support_conversations(count: int, offset: int = 0) -> list[list[dict]]:
    names = ["Ann", "Bo", "Cy", "Dee", "Eli", "Fay"]
    return [
        conversation(
            f"Hello, I'm {names[i % 6]}. Where is order #{100 + i}?" + " It is late." * (i % 4),
            f"Hi {names[i % 6]},\nOrder #{100 + i} ships today.\nWarm regards, Lumo",
        )
        for i in range(offset, offset + count)
    ]


def small_version(project):
    return make_dataset_version(
        project,
        {"train": support_conversations(12), "val": support_conversations(2, 50), "test": support_conversations(2, 70)},
    )
